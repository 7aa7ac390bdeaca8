"""The SVHN cache: each source folder (train/, extra/, test/) prepared once into one HDF5 file of crops.

``<cache_dir>/svhn-<folder>-<color><image_size>.h5`` holds one row per digitStruct record (bad
records included, so a row's id is its position): images uint8 (N, C, S, S), status uint8 (N,),
names, offsets int64 (N + 1,), boxes float64 (D, 5), crop_box float32 (N, 4), source_size int32
(N, 2); its attributes hold the :class:`attn.data.cache.CacheKey` (build options, and the source's
digitStruct.mat size, mtime and content digest and PNG count) and the build progress. The layout and
the rebuild rules are in docs/data.md. ``max_digits`` is applied when loading, so changing it needs
no rebuild.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
from PIL import Image

from attn.data.cache import CacheKey, Notes, Progress, ProgressCallback, building, cache_folder, locked, note, say
from attn.data.svhn.crop import EXPAND, crop_box, crop_image, fallback_box
from attn.data.svhn.digitstruct import DigitStruct, read_digit_struct
from attn.data.svhn.layout import PREPARE_HINT, png_names, source_folder
from attn.errors import DataError

CACHE_VERSION = 2
"""Bump when what a cache holds changes (crop rule, layout): older files are then rebuilt."""


def cache_path(cache_dir: str | Path, folder: str, image_size: int = 64, color: str = "gray") -> Path:
    """Where the cache of one source folder built with these options lives."""
    return Path(cache_dir) / f"svhn-{folder}-{color}{image_size}.h5"


def _options(folder: str, image_size: int, color: str) -> dict:
    return {
        "format": "attn-svhn-cache",
        "version": CACHE_VERSION,
        "folder": folder,
        "image_size": image_size,
        "color": color,
        "channels": 1 if color == "gray" else 3,
        "expand": EXPAND,
    }


def _source(mat: Path, num_png: int, ds: Optional[DigitStruct] = None) -> dict:
    """The source fingerprint: the file's size and mtime and the PNG count (cheap), plus, given the
    parsed records, their digest and count (which decide when only the size or mtime moved)."""
    st = mat.stat()
    out = {"source_mat_size": st.st_size, "source_mat_mtime_ns": st.st_mtime_ns, "source_num_png": num_png}
    if ds is not None:
        out.update(source_records_sha256=ds.digest(), num_records=len(ds))
    return out


def _verdict(path: Path, quick: CacheKey, mat: Path) -> tuple[str, str]:
    """Verdict on a finished cache file against ``quick`` (options and the cheap source fingerprint):
    ("ok" | "stat" | "rebuild", why). "stat": only digitStruct.mat's size or mtime changed, so its
    parsed content decides; ``why`` is then the stored records digest."""
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            n = int(a["num_records"])
            C, S = quick.options["channels"], quick.options["image_size"]
            shapes = {
                "images": (n, C, S, S),
                "status": (n,),
                "offsets": (n + 1,),
                "names": (n,),
                "crop_box": (n, 4),
                "source_size": (n, 2),
            }
            for key, shape in shapes.items():
                if key not in f or f[key].shape != shape:
                    raise KeyError(f"dataset '{key}' missing or not {shape}")
            if f["boxes"].shape[1:] != (5,) or not int(a["complete"]):
                raise KeyError("incomplete")
            changed = quick.option_changes(a)
            if changed:
                return "rebuild", f"svhn: cache {path} was built with other options ({', '.join(changed)}); rebuilding it"
            num_png = quick.source["source_num_png"]
            if int(a["source_num_png"]) != num_png:
                return "rebuild", (
                    f"svhn: {mat.parent} now holds {num_png} PNGs, the cache {path} was built from "
                    f"{int(a['source_num_png'])}; rebuilding it"
                )
            if quick.source_changes(a):
                return "stat", str(a["source_records_sha256"])
            return "ok", ""
    except Exception as exc:  # noqa: BLE001 - any failure to read it means: build it again
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return "rebuild", f"svhn: cache {path} is unreadable ({reason}); rebuilding it"


def ensure_cache(
    folder_dir: str | Path,
    cache_dir: str | Path,
    *,
    image_size: int = 64,
    color: str = "gray",
    notes: Notes = None,
    progress: Optional[ProgressCallback] = None,
    chunk_rows: int = 1024,
    workers: Optional[int] = None,
) -> Path:
    """Return the cache of one source folder (train/, extra/ or test/), building it when missing,
    built with other options, damaged or older than its source; resume a build that was interrupted.

    A build writes ``<name>.partial`` in chunks of ``chunk_rows`` rows, recording ``rows_done`` after
    each, and renames it to the final name only when complete: an interrupted build (Ctrl-C, a crash)
    never reads as a finished cache, and the next call continues at ``rows_done`` if the source and
    options are unchanged. ``progress(done, total)`` is called after each committed chunk.
    """
    folder_dir = Path(folder_dir)
    if color not in ("gray", "rgb"):
        raise ValueError(f"color must be 'gray' or 'rgb', not {color!r}")
    mat = source_folder(folder_dir)
    final = cache_path(cache_folder(cache_dir, "SVHN cache"), folder_dir.name, image_size, color)
    options = _options(folder_dir.name, image_size, color)
    with locked(final, "svhn"):
        pngs = png_names(folder_dir)
        ds = None
        if final.exists():
            verdict, why = _verdict(final, CacheKey(options, _source(mat, len(pngs))), mat)
            if verdict == "ok":
                return final
            if verdict == "stat":
                ds = read_digit_struct(mat)
                if ds.digest() == why:
                    # Same records (e.g. the folder was copied): adopt the new size/mtime, keep the cache.
                    with contextlib.suppress(OSError):  # read-only: parse again next time, still correct
                        with h5py.File(final, "r+") as f:
                            f.attrs.update(_source(mat, len(pngs)))
                    return final
                why = f"svhn: {mat} changed since the cache {final} was built; rebuilding it"
            note(notes, why)
            final.unlink()
        if ds is None:
            ds = read_digit_struct(mat)
        missing = [name for name in ds.names if name not in pngs]
        if missing:
            raise DataError(
                f"{folder_dir}: {len(missing)} of {len(ds)} PNGs named in digitStruct.mat are missing, first "
                f"'{missing[0]}'; the folder is incomplete: extract it again ({PREPARE_HINT})"
            )
        key = CacheKey(options, _source(mat, len(pngs), ds))
        _build(folder_dir, ds, final, key, notes, progress, chunk_rows, workers)
    return final


def _open_partial(partial: Path, key: CacheKey, notes: Notes) -> Optional[h5py.File]:
    """The interrupted build at ``partial`` if it was made from the same source with the same options."""
    if not partial.exists():
        return None
    try:
        f = h5py.File(partial, "r+")
    except Exception as exc:  # noqa: BLE001
        note(notes, f"svhn: unfinished cache {partial} is unreadable ({str(exc).splitlines()[0]}); starting over")
        partial.unlink()
        return None
    if not key.matches(f.attrs) or "rows_done" not in f.attrs:
        f.close()
        note(notes, f"svhn: unfinished cache {partial} came from another source or options; starting over")
        partial.unlink()
        return None
    return f


def _create_partial(partial: Path, folder_dir: Path, ds: DigitStruct, key: CacheKey) -> h5py.File:
    """A new, empty build: every dataset allocated, the records and the key stored, rows_done = 0."""
    n, S, C = len(ds), key.options["image_size"], key.options["channels"]
    f = h5py.File(partial, "w")
    try:
        f.create_dataset("images", (n, C, S, S), np.uint8, chunks=(min(n, 128), C, S, S) if n else None)
        f.create_dataset("status", (n,), np.uint8)
        f.create_dataset("crop_box", (n, 4), np.float32)
        f.create_dataset("source_size", (n, 2), np.int32)
        encoded = [s.encode("utf-8") for s in ds.names]
        f.create_dataset("names", data=np.array(encoded, dtype=f"S{max(map(len, encoded), default=1)}"))
        f.create_dataset("offsets", data=ds.offsets)
        f.create_dataset("boxes", data=ds.boxes)
        f.attrs.update(key.as_dict())
        f.attrs.update(rows_done=0, complete=0, source_dir=str(folder_dir))
        f.flush()
    except BaseException:
        f.close()
        partial.unlink()
        raise
    return f


def _build(
    folder_dir: Path,
    ds: DigitStruct,
    final: Path,
    key: CacheKey,
    notes: Notes,
    progress: Optional[ProgressCallback],
    chunk_rows: int,
    workers: Optional[int],
) -> None:
    """Build (or resume) the cache of ``folder_dir`` into ``final``, chunk by chunk."""
    n = len(ds)
    t0 = time.monotonic()
    with building(final, resumable=True) as partial:
        f = _open_partial(partial, key, notes) or _create_partial(partial, folder_dir, ds, key)
        start = int(f.attrs["rows_done"])
        verb = "resuming" if start else "building"
        say(
            f"svhn: {verb} cache {final} from {n} images in {folder_dir}"
            + (f" at {start}" if start else "")
            + " (interrupted builds resume)"
        )
        if start and notes is not None:
            notes.append(f"svhn: resumed the cache build of {final} at {start} of {n} images")
        try:
            _write_rows(f, folder_dir, ds, key, start, chunk_rows, workers, progress)
            f.attrs["complete"] = 1
        finally:
            f.close()
    say(f"svhn: built {final} in {time.monotonic() - t0:.0f} s")


def _write_rows(f: h5py.File, folder_dir: Path, ds: DigitStruct, key: CacheKey, start: int, chunk_rows: int,
                workers: Optional[int], progress: Optional[ProgressCallback]) -> None:
    """Crop the records from ``start`` on into ``f``, recording ``rows_done`` after each chunk."""
    n, S, C, color = len(ds), key.options["image_size"], key.options["channels"], key.options["color"]
    workers = workers or min(8, os.cpu_count() or 1)
    # PIL decodes and resamples with the GIL released, so threads overlap the PNG work.
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None

    def job(i: int):
        name, boxes = ds.record(i)
        return _process_row(folder_dir, name, boxes, S, color)

    try:
        with Progress(f"svhn {folder_dir.name} cache", n, start) as report:
            for a in range(start, n, chunk_rows):
                b = min(n, a + chunk_rows)
                results = list(pool.map(job, range(a, b)) if pool is not None else map(job, range(a, b)))
                images = np.zeros((b - a, C, S, S), dtype=np.uint8)
                status = np.array([r[3] for r in results], dtype=np.uint8)
                for j, (img, _, _, _) in enumerate(results):
                    images[j] = img
                f["images"][a:b] = images
                f["status"][a:b] = status
                f["crop_box"][a:b] = np.array([r[1] for r in results], dtype=np.float32)
                f["source_size"][a:b] = np.array([r[2] for r in results], dtype=np.int32)
                f.flush()
                # Progress is recorded only once the chunk's rows are on disk.
                f.attrs["rows_done"] = b
                f.flush()
                report.update(b, b - a)
                if progress is not None:
                    progress(b, n)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _process_row(folder_dir: Path, name: str, boxes: np.ndarray, size: int, color: str):
    """One record -> (crop (C, S, S), crop box, (width, height), status): status 0 for a usable box, else
    the :func:`fallback_box` crop and its status (training skips those records, the test keeps them)."""
    path = folder_dir / name
    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
            box, status = crop_box(boxes, w, h), 0
            if box is None:
                box, status = fallback_box(boxes, w, h)
            return crop_image(im, box, size, color), box, (w, h), status
    except FileNotFoundError:
        raise DataError(
            f"{path}: PNG named in digitStruct.mat is missing; extract the folder again ({PREPARE_HINT})"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the PNG ({exc}); the file is damaged: extract the folder again") from None
