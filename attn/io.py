"""Writing files so that a reader never sees half of one: write beside the target, then rename.

``os.replace`` within one folder is atomic on POSIX and Windows, so ``path`` always holds either its
old content (or nothing) or the whole new one, whatever stops the writer (Ctrl-C, a crash, a full
disk). Every cache, generated image and checkpoint of attn is written through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """``<dir>/.<name>.<pid>.tmp``: hidden, and distinct per process so that writers never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is a :func:`temp_path` left behind by a writer that was stopped."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


@contextlib.contextmanager
def atomic_write(path: str | Path, *, temp: Optional[Path] = None, keep_on_error: bool = False) -> Iterator[Path]:
    """Yield a path to write ``path``'s new content to; when the block ends normally, rename it onto
    ``path``. When the block raises, the temporary file is deleted (or kept, with ``keep_on_error``,
    for a writer that resumes from it) and ``path`` is untouched.

    ``temp`` names the temporary file (default :func:`temp_path`); it must be in ``path``'s folder.
    """
    path = Path(path)
    tmp = temp if temp is not None else temp_path(path)
    try:
        yield tmp
    except BaseException:
        if not keep_on_error:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`; OSError propagates."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
