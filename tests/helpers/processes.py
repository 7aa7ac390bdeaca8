"""This test session's processes: every process the session starts (Ray's GCS, raylets and workers
included, however deep) inherits ATTN_TEST_SESSION=MARKER, so they can be found in /proc, told apart
from processes of anything else on the machine, and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

MARKER = f"attn-tests-{uuid.uuid4().hex}"
os.environ["ATTN_TEST_SESSION"] = MARKER  # a fresh one per session, also in a pytest run by a test


def marked_pids() -> list[int]:
    """Processes (other than this one) whose environment carries this session's marker."""
    pids = []
    needle = f"ATTN_TEST_SESSION={MARKER}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def command_line(pid: int) -> list[str]:
    """The process's argv ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """The process runs (a zombie has ended: only its parent has not collected it yet, and a daemon
    reparented to a container's init may never be collected)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def marked_pids_matching(*needles: str) -> list[int]:
    """Marked processes whose command line holds one of ``needles``, and every marked descendant of
    them (Ray renames its worker processes, ``ray::...``, so they are found through their raylet)."""
    return with_descendants([p for p in marked_pids() if any(n in " ".join(command_line(p)) for n in needles)])


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every marked process descending from one of them."""
    found, marked = set(pids), marked_pids()
    grew = True
    while grew:
        grew = False
        for p in marked:
            if p not in found and parent_pid(p) in found:
                found.add(p)
                grew = True
    return sorted(found)


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def is_ray_or_mlflow_server(argv: list[str]) -> str | None:
    """What a command line is, when it is a Ray head or node daemon or an MLflow tracking server:
    'gcs_server', 'raylet' or 'mlflow server'; else None."""
    if not argv:
        return None
    name = Path(argv[0]).name
    if name in ("gcs_server", "raylet"):
        return name
    for i, arg in enumerate(argv[:-1]):
        if Path(arg).name == "mlflow" and argv[i + 1] == "server":
            return "mlflow server"
    return None


def marked_servers() -> dict[int, str]:
    """This session's Ray daemons and MLflow servers that are running now: {pid: what}."""
    found = {}
    for pid in marked_pids():
        what = is_ray_or_mlflow_server(command_line(pid))
        if what:
            found[pid] = what
    return found
