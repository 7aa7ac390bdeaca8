"""This test session's processes: every process the session starts (Ray's GCS, raylets and workers
included, however deep) inherits ATTN_TEST_SESSION=MARKER, so they can be found in /proc, told apart
from processes of anything else on the machine, and stopped.

A process that renames itself can lose that mark: Ray's agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) write their title over the memory that /proc/PID/environ shows. Every Ray
the session starts therefore keeps its files in the session's own folder (RAY_TMPDIR=SESSION_DIR), and
a process with a file open there, or its working folder there, is the session's too."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

MARKER = f"attn-tests-{uuid.uuid4().hex}"
os.environ["ATTN_TEST_SESSION"] = MARKER  # a fresh one per session, also in a pytest run by a test
# Short: Ray's sockets live three folders below it, and a Unix socket path holds at most 107 bytes.
SESSION_DIR = Path(tempfile.gettempdir()) / f"attn-{MARKER[-12:]}"
SESSION_DIR.mkdir(parents=True, exist_ok=True)
os.environ["RAY_TMPDIR"] = str(SESSION_DIR)
_CREATOR = os.getpid()


@atexit.register
def _remove_session_dir() -> None:
    if os.getpid() == _CREATOR:  # not in a forked child that exits through Python
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and int(e.name) != os.getpid()]


def _uses_session_dir(pid: int) -> bool:
    """The process has a file open in SESSION_DIR, or works there."""
    inside = str(SESSION_DIR) + os.sep
    try:
        entries = [Path(f"/proc/{pid}/cwd"), *Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:  # gone, or not ours to read
        return False
    for entry in entries:
        with contextlib.suppress(OSError):  # a file closed meanwhile
            if os.readlink(entry).startswith(inside):
                return True
    return False


def session_pids() -> list[int]:
    """Every running process of this session: marked ones and those using SESSION_DIR."""
    marked = set(marked_pids())
    return sorted(p for p in _pids() if (p in marked or _uses_session_dir(p)) and alive(p))


def marked_pids() -> list[int]:
    """Processes (other than this one) whose environment carries this session's marker."""
    pids = []
    needle = f"ATTN_TEST_SESSION={MARKER}".encode()
    for pid in _pids():
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes():
                pids.append(pid)
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
    """``pids`` and every process descending from one of them (marked or not: a raylet's agents lose
    the mark, and would outlive a raylet killed without them)."""
    found, parents = set(pids), {p: parent_pid(p) for p in _pids()}  # one read of /proc
    grew = True
    while grew:
        grew = False
        for p, parent in parents.items():
            if p not in found and parent in found:
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
