"""Fetching and unpacking dataset archives: resumable HTTP downloads and safe tar extraction.

Every failure raises :class:`attn.errors.DataError` with one line naming the URL or file, so the CLI
prints ``error: ...`` instead of a traceback.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional

from attn.errors import DataError

CHUNK = 1 << 20
# tarfile's own guard against unsafe members (Python 3.11.4+, 3.10.12+), on top of ours.
_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _bar(total: Optional[int], initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        file=sys.stderr, mininterval=1.0, leave=False,
    )


def download(url: str, dest: str | Path, *, timeout: float = 60.0, desc: Optional[str] = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` counts as complete and is not fetched again: data is written to
    ``<dest>.part`` and renamed only once all Content-Length bytes arrived. A leftover ``.part``
    is continued with an HTTP Range request (servers that ignore it send the whole file again).
    Progress goes to stderr.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "attn-prepare/1", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our .part is already as long as the file (or longer): start over
            part.unlink()
            return download(url, dest, timeout=timeout, desc=desc)
        raise DataError(
            f"{url}: download failed (HTTP {exc.code} {exc.reason}); check the URL or pass --url with a mirror"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{url}: download failed ({reason}); check the network or pass --url with a mirror") from None
    with response:
        if response.status == 206:
            # Append only if the server resumed exactly where our .part ends ("bytes START-END/TOTAL").
            spec = (response.headers.get("Content-Range") or "").replace("bytes", "").strip()
            if spec.split("-")[0].strip() != str(have):
                part.unlink()
                raise DataError(
                    f"{url}: the server resumed at another byte than {have} ({spec or 'no Content-Range'}); "
                    "the partial download was deleted: run the command again"
                )
            mode, start = "ab", have
        else:
            mode, start = "wb", 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        got = start
        bar = _bar(total, start, desc or dest.name)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except http.client.IncompleteRead as exc:
                        out.write(exc.partial)
                        got += len(exc.partial)
                        break
                    except (OSError, http.client.HTTPException) as exc:
                        raise DataError(
                            f"{url}: download broke off after {got} bytes ({exc}); run the command again to resume"
                        ) from None
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and got != total:
        raise DataError(f"{url}: download stopped at {got} of {total} bytes; run the command again to resume")
    os.replace(part, dest)
    return dest


class _Counting:
    """A read-only file wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, fh, bar) -> None:
        self.fh, self.bar = fh, bar

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.bar.update(len(data))
        return data


def _unsafe(member: tarfile.TarInfo) -> Optional[str]:
    """Why extracting ``member`` could write outside the target folder, or None if it cannot."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("\\") or ".." in path.parts:
        return "absolute path or '..'"
    if not (member.isfile() or member.isdir()):
        return "a link or special file"
    return None


def extract_tar(
    archive: str | Path, dest: str | Path, folder: str, *, require: tuple[str, ...] = (), delete_bad: bool = False
) -> Path:
    """Extract the members under ``folder``/ of a gzip tar ``archive`` into ``dest``/``folder`` and
    return that path.

    The archive is unpacked into a hidden sibling first and moved into place only when the whole
    stream read cleanly (gzip CRC included), so ``dest/folder`` never holds a partial extraction.
    Unsafe members (absolute paths, '..', links, devices) are refused. ``require``: files (relative to
    ``folder``) the archive must hold, e.g. ``("digitStruct.mat",)``. ``delete_bad``: delete an
    archive that turns out damaged, so that the next run downloads it again.
    """
    archive, dest = Path(archive), Path(dest)
    target = dest / folder
    tmp = dest / f".{folder}.extracting"
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous run stopped mid-way
    tmp.mkdir(parents=True)
    bar = _bar(archive.stat().st_size, 0, f"extract {archive.name}")
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=_Counting(raw, bar), mode="r|gz") as tar:
            for member in tar:
                why = _unsafe(member)
                if why is not None:
                    raise DataError(
                        f"{archive}: refusing member '{member.name}' ({why}); extract only archives you trust"
                    )
                parts = PurePosixPath(member.name).parts
                if parts and parts[0] == folder:
                    tar.extract(member, tmp, set_attrs=False, **_FILTER)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise DataError(f"{dest}: cannot extract {archive.name} here ({exc.strerror})") from None
        if delete_bad:
            archive.unlink()
        then = "it was deleted: run the command again to download it anew" if delete_bad else "delete it and retry"
        raise DataError(f"{archive}: not a complete gzip tar archive ({exc or type(exc).__name__}); {then}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    for rel in ("",) + tuple(require):
        if not (tmp / folder / rel).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{archive}: holds no '{folder}/{rel}'; not the expected archive")
    os.replace(tmp / folder, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["download", "extract_tar"]
