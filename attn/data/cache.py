"""Prepared-data caches: what every dataset's "prepare once, load every run" step shares.

A dataset turns its source (PNGs, label files, digitStruct.mat) into arrays once and loads those on
every later run. Each cache is one file under the dataset's cache folder with:

- a :class:`CacheKey`: the build ``options`` and a ``source`` fingerprint (digests and sizes of the
  inputs); a cache whose stored key differs is rebuilt, with a note saying which part changed;
- a lock (:func:`locked`), so the ranks of one run on one machine build a cache once;
- a build written to ``<name>.partial`` and renamed into place when whole (:func:`building`), so an
  interrupted build never reads as a finished cache (and a resumable one continues from it);
- a :class:`Progress` reporter on stderr and the notes channel (:func:`note`) to the run log.

Where each dataset stores its key (HDF5 attributes, a JSON file beside the cache, the file name) is
its own; see docs/data.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from attn.errors import DataError
from attn.io import atomic_write, write_bytes_atomic

Notes = Optional[list[str]]
"""The run log's notes: data events a run reports once (rebuilt caches, skipped records)."""

ProgressCallback = Callable[[int, int], None]
"""progress(done, total): called after each committed chunk of a cache build."""


def note(notes: Notes, line: str) -> None:
    """Report a data event now (stderr: a build can take minutes) and keep it for the run log."""
    print(line, file=sys.stderr, flush=True)
    if notes is not None:
        notes.append(line)


def say(line: str) -> None:
    """A progress line on stderr that is not kept for the run log."""
    print(line, file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    """A stored key value (HDF5 bytes, numpy scalars, JSON lists) as the Python value it was written from."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@dataclass(frozen=True)
class CacheKey:
    """What a cache was built with and from: ``options`` (the build options and the cache's format
    version) and ``source`` (fingerprints of the inputs: digests, sizes, counts). Values are JSON
    scalars or lists; :meth:`as_dict` is what a dataset stores with the cache."""

    options: Mapping[str, Any]
    source: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.options, **self.source}

    def options_token(self, length: int = 16) -> str:
        """Hex sha256 of the options alone (sorted JSON), for a file name per option set."""
        return hashlib.sha256(json.dumps(dict(self.options), sort_keys=True).encode()).hexdigest()[:length]

    def option_changes(self, stored: Mapping[str, Any]) -> list[str]:
        """Option names whose stored value differs (or is missing)."""
        return [k for k, v in self.options.items() if _plain(stored.get(k)) != v]

    def source_changes(self, stored: Mapping[str, Any]) -> list[str]:
        """Source fingerprint names whose stored value differs (or is missing)."""
        return [k for k, v in self.source.items() if _plain(stored.get(k)) != v]

    def matches(self, stored: Optional[Mapping[str, Any]]) -> bool:
        return stored is not None and not self.option_changes(stored) and not self.source_changes(stored)

    def write_json(self, path: Path) -> None:
        """Store the key as a JSON file (atomically: a key file present is whole)."""
        write_bytes_atomic(path, (json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n").encode())

    @staticmethod
    def read_json(path: Path) -> Optional[dict[str, Any]]:
        """A key written by :meth:`write_json`, or None when absent or unreadable."""
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return stored if isinstance(stored, dict) else None


def digest(*parts: bytes | str) -> str:
    """Hex sha256 of the parts in order (text as UTF-8)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
    return h.hexdigest()


def cache_folder(path: Path, what: str = "cache") -> Path:
    """Create ``path`` if needed; DataError naming it and data.cache_dir when that fails."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{path}: cannot create the {what} folder ({exc.strerror}); set data.cache_dir to a writable folder"
        ) from None
    return path


def partial_path(final: Path) -> Path:
    """Where the build of ``final`` is written until it is whole."""
    return final.with_name(final.name + ".partial")


@contextlib.contextmanager
def building(final: Path, *, resumable: bool = False) -> Iterator[Path]:
    """Yield :func:`partial_path` of ``final``; rename it onto ``final`` when the block ends normally.
    On an exception the partial file is kept when ``resumable`` (the next build continues it), else
    deleted; ``final`` is never touched by a failed build."""
    with atomic_write(final, temp=partial_path(final), keep_on_error=resumable) as partial:
        yield partial


@contextlib.contextmanager
def locked(target: Path, label: str) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s build (``.<name>.lock`` beside it): ranks of one run on
    one machine build it once, the others wait and then find it built."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no concurrent builds expected
        yield
        return
    try:
        fh = open(target.with_name(f".{target.name}.lock"), "a+")
    except OSError:  # a read-only cache folder: nothing can be built there anyway, reading needs no lock
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say(f"{label}: waiting for another process building {target}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Progress:
    """Build progress on stderr: a tqdm bar on a terminal, a line every ~10% (and per minute) in logs."""

    def __init__(self, label: str, total: int, start: int = 0) -> None:
        self.total, self.label = total, label
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit="img", file=sys.stderr, leave=False)
        self.last_line, self.last_pct = time.monotonic(), -10

    def update(self, done: int, step: int) -> None:
        """``done`` items of ``total`` finished, ``step`` of them since the last call."""
        if self.bar is not None:
            self.bar.update(step)
            return
        pct = 100 * done // max(1, self.total)
        if pct >= self.last_pct + 10 or time.monotonic() - self.last_line > 60:
            say(f"{self.label}: {done}/{self.total} ({pct}%)")
            self.last_line, self.last_pct = time.monotonic(), pct

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
