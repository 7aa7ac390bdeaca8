"""`python run.py prepare multinumber --svhn DIR --to OUT`: generate the two-number dataset.

Worker processes render samples (:mod:`attn.data.multinumber.draw`) in chunks of ids; every PNG is
written atomically, so a present PNG is whole, and a rerun with the same options (meta.json must
match) skips those, recomputing only their (cheap) draws for the labels: the final files equal an
uninterrupted run's. The split JSONs are written last and mark a finished dataset. Layout, sampling
and resume rules: docs/data.md.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from attn.data.cache import Progress, say
from attn.data.multinumber.draw import INPAINT_RADIUS, INPAINT_SCALE, PAD, PLACE_TRIES, Job, draw
from attn.data.multinumber.format import FOLDER_NAMES, FORMAT, FORMAT_VERSION, MAX_DIGITS, SPLITS, json_bytes
from attn.data.multinumber.pools import build_pools, source_folders
from attn.errors import DataError
from attn.io import atomic_write, is_temp_name

PNG_COMPRESSION = 3
"""zlib level of the PNGs: level 3 is ~10% smaller than 1 for ~1 ms more per image."""


def _write_png(path: Path, canvas: np.ndarray) -> None:
    """Save gray ``canvas`` as a 3-channel PNG atomically: a present ``<id>.png`` is always whole."""
    ok, buf = cv2.imencode(".png", cv2.merge([canvas, canvas, canvas]), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise DataError(f"{path}: PNG encoding failed")
    _write_atomic(path, buf.tobytes(), " of --to")


_JOB: Optional[Job] = None


def _init_worker(job: Job) -> None:
    global _JOB
    _JOB = job
    # Ctrl-C reaches the whole process group: the parent stops the pool, workers finish their chunk.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one process per core already


def _work(start: int, stop: int, have: frozenset) -> np.ndarray:
    """Samples start..stop-1 -> int64 (stop - start, 6): pool row of first and second number, then
    (x, y) of first and second box. Writes the PNG of every sample not in ``have``."""
    job = _JOB
    assert job is not None
    out = np.empty((stop - start, 6), dtype=np.int64)
    for i, sid in enumerate(range(start, stop)):
        render = sid not in have
        rows, pos, canvas = draw(job, sid, render)
        if render:
            _write_png(Path(job.out) / job.split_of(sid) / f"{sid}.png", canvas)
        out[i, :2] = rows
        out[i, 2:] = pos.ravel()
    return out


def split_sizes(count: int, split: Sequence[float]) -> dict[str, int]:
    """{"train", "val", "test"} sample counts: round(count * split[0]), round(count * split[1]),
    the rest (consecutive id ranges in that order)."""
    n_train = min(count, int(round(count * split[0])))
    n_val = min(count - n_train, int(round(count * split[1])))
    return {"train": n_train, "val": n_val, "test": count - n_train - n_val}


def _check_options(size, box, count, split, seed, workers, test_pool, radius, scale) -> tuple[float, float, float]:
    def whole(name, value, low, what):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"{name} = {value!r} is invalid; use {what}")

    whole("box", box, 8, "an integer >= 8 (pixels of each number's square)")
    whole("size", size, 2 * box + PAD, f"an integer >= 2 * box + {PAD} = {2 * box + PAD}, so two boxes fit apart")
    whole("count", count, 1, "an integer >= 1")
    whole("seed", seed, 0, "an integer >= 0")
    if workers is not None:
        whole("workers", workers, 1, "an integer >= 1 (or leave it out for one per CPU)")
    whole("inpaint_radius", radius, 1, "an integer >= 1")
    whole("inpaint_scale", scale, 1, "an integer >= 1 (1 = Telea on the full canvas)")
    if scale > 1 and size // scale < 4:
        raise DataError(f"inpaint_scale = {scale} shrinks the {size} px canvas below 4 px; use a smaller scale")
    if test_pool not in ("test", "train"):
        raise DataError(f"test_pool = {test_pool!r} is invalid; use 'test' (pairs from SVHN test/) or 'train'")
    try:
        parts = tuple(float(s) for s in split)
    except (TypeError, ValueError):
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(s) and s >= 0 for s in parts) or abs(sum(parts) - 1) > 1e-6:
        raise DataError(
            f"split = {tuple(split) if isinstance(split, (list, tuple)) else split!r} is invalid; use three "
            "non-negative fractions (train, val, test) that sum to 1, e.g. 0.8 0.1 0.1"
        )
    return parts


def _write_atomic(path: Path, data: bytes, of: str = "") -> None:
    """Write ``data`` to ``path`` atomically; DataError naming it when the disk refuses."""
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror}); check the free space and permissions{of}") from None


def _claim(out: Path, meta: dict) -> None:
    """Write OUT/meta.json, or check that the one there was written with the same options."""
    path = out / "meta.json"
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ({exc}); delete {out} or choose another --to") from None
        # The SVHN folder may move; what it holds (records, digests) must not change.
        ignore = {"svhn_dir"}
        keys = sorted((set(have) | set(meta)) - ignore)
        diff = [k for k in keys if have.get(k) != meta.get(k)]
        if diff:
            k = diff[0]
            if k == "svhn":  # name the folders rather than dumping record digests
                what = f"SVHN folders {_records(have.get(k))}; this run reads {_records(meta[k])}"
            else:
                what = f"{k} = {json.dumps(have.get(k))}, this run asks for {json.dumps(meta.get(k))}"
            raise DataError(
                f"{path}: {out} was generated with {what} (differing: {', '.join(diff)}); rerun with the same "
                "options to resume, or choose another --to"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise DataError(
            f"{out}: not empty and holds no meta.json, so it is not an unfinished multinumber dataset; "
            "choose a new or empty folder for --to"
        )
    _write_atomic(path, json_bytes(meta))


def _records(sources) -> str:
    """'train/ (33402 records), test/ (13068 records)' from meta.json's "svhn" entry."""
    if not isinstance(sources, dict):
        return "unknown"
    order = sorted(sources, key=lambda f: FOLDER_NAMES.index(f) if f in FOLDER_NAMES else len(FOLDER_NAMES))
    return ", ".join(
        f"{f}/ ({sources[f].get('records') if isinstance(sources[f], dict) else '?'} records)" for f in order
    )


def _present(folder: Path) -> set[int]:
    """Ids of the whole PNGs in ``folder``; leftovers of interrupted writes are removed."""
    ids = set()
    for e in os.scandir(folder):
        name = e.name
        if is_temp_name(name):
            Path(e.path).unlink(missing_ok=True)
        elif name.endswith(".png") and name[:-4].isdigit() and e.stat().st_size > 0:
            ids.add(int(name[:-4]))
    return ids


def _entries(job: Job, split: str, ids: range, rec: np.ndarray) -> bytes:
    """The split JSON: one entry a line (fields: docs/data.md)."""
    pool = job.pools[job.pool_key(split)]
    B = job.box
    lines = []
    for sid in ids:
        r0, r1, x0, y0, x1, y1 = rec[sid].tolist()
        entry = {
            "id": sid,
            "file": f"{split}/{sid}.png",
            "first": pool.tokens(r0),
            "second": pool.tokens(r1),
            "boxes": [[x0, y0, B, B], [x1, y1, B, B]],
            "source": [[FOLDER_NAMES[pool.folder[r]], int(pool.index[r])] for r in (r0, r1)],
        }
        lines.append(json.dumps(entry, separators=(",", ":")))
    return ("[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n").encode("utf-8")




def _meta(root: Path, size: int, box: int, count: int, parts, seed: int, test_pool: str, radius: int, scale: int,
          sources: dict) -> dict:
    """meta.json: every option, the sources, the format and the split sizes."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "size": size,
        "box": box,
        "count": count,
        "split": list(parts),
        "split_sizes": split_sizes(count, parts),
        "seed": seed,
        "test_pool": test_pool,
        "max_digits": MAX_DIGITS,
        "placement": {"pad": PAD, "tries": list(PLACE_TRIES)},
        "inpaint": {"method": "telea", "radius": radius, "scale": scale},
        "svhn_dir": str(root.resolve()),
        "svhn": sources,
        "png": {"channels": 3, "compression": PNG_COMPRESSION},
    }


def generate_multinumber(
    svhn_dir: str | Path,
    out: str | Path,
    *,
    size: int = 224,
    box: int = 64,
    count: int = 500_000,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: Optional[int] = None,
    test_pool: str = "test",
    progress: bool = True,
    inpaint_radius: int = INPAINT_RADIUS,
    inpaint_scale: int = INPAINT_SCALE,
) -> dict[str, int]:
    """Generate the multinumber dataset from SVHN format 1 at ``svhn_dir`` into ``out`` (layout,
    sampling and resume rules in docs/data.md; design reference section 2.5).

    size: canvas side; box: side of each pasted number (size >= 2 * box + 5); count: samples;
    split: (train, val, test) fractions summing to 1; seed: base of the per-sample seeds;
    workers: processes (default: one per CPU), output is identical for every value;
    test_pool: "test" draws test pairs from SVHN test/ only, "train" from the train pool;
    progress: report on stderr; inpaint_radius, inpaint_scale: Telea radius in canvas pixels and the
    factor the canvas is shrunk by for it (:func:`attn.data.multinumber.draw.inpaint`; 32 and 1 = the
    reference, slow). Returns {"train": n, "val": n, "test": n}. Bad options or input raise DataError.
    """
    parts = _check_options(size, box, count, split, seed, workers, test_pool, inpaint_radius, inpaint_scale)
    root = Path(svhn_dir).expanduser()
    out = Path(out).expanduser()
    folders = source_folders(root, test_pool)
    t0 = time.monotonic()
    pools, sources = build_pools(root, folders, test_pool)
    meta = _meta(root, size, box, count, parts, seed, test_pool, inpaint_radius, inpaint_scale, sources)
    sizes = meta["split_sizes"]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create the folder ({exc.strerror}); choose another --to") from None
    _claim(out, meta)
    job = Job(
        root=str(root),
        out=str(out),
        size=size,
        box=box,
        seed=seed,
        radius=inpaint_radius,
        scale=inpaint_scale,
        bounds=(sizes["train"], sizes["train"] + sizes["val"], count),
        test_pool=test_pool,
        pools=pools,
    )
    have: set[int] = set()
    for name in SPLITS:
        (out / name).mkdir(exist_ok=True)
        # A PNG counts only in its own split's folder and id range.
        have |= {i for i in _present(out / name) if i < count and job.split_of(i) == name}
    jsons = [out / f"{name}.json" for name in SPLITS]
    if len(have) == count and all(p.is_file() for p in jsons):
        if progress:
            say(f"multinumber: {out} is complete already (same options); nothing to do")
        return sizes
    # The split JSONs mark a finished dataset: drop them until this run has finished.
    for p in jsons:
        p.unlink(missing_ok=True)
    todo = count - len(have)
    if progress:
        say(
            f"multinumber: generating {todo} of {count} images into {out} from {root} "
            f"({', '.join(f'{k} {v}' for k, v in sizes.items())}; interrupted runs resume)"
        )
    rec = _run(job, count, have, workers or os.cpu_count() or 1, progress)
    ranges = {"train": range(0, job.bounds[0]), "val": range(*job.bounds[:2]), "test": range(job.bounds[1], count)}
    for name in SPLITS:
        _write_atomic(out / f"{name}.json", _entries(job, name, ranges[name], rec))
    if progress:
        dt = time.monotonic() - t0
        say(f"multinumber: done in {dt:.0f} s ({todo / max(dt, 1e-9):.1f} new images/s)")
    return sizes


def _run(job: Job, count: int, have: set[int], workers: int, progress: bool) -> np.ndarray:
    """Run every sample (rendering those not in ``have``) in chunks -> int64 (count, 6) draws."""
    rec = np.empty((count, 6), dtype=np.int64)
    # Chunks of <= 64 ids: small enough to balance 2 workers on tiny runs and to stop fast on Ctrl-C.
    chunk = max(1, min(64, -(-count // (4 * workers))))
    chunks = [(a, min(count, a + chunk)) for a in range(0, count, chunk)]
    report = Progress("multinumber", count) if progress else None

    def args(a: int, b: int):
        return a, b, frozenset(i for i in range(a, b) if i in have)

    def done(a: int, b: int, res: np.ndarray) -> None:
        rec[a:b] = res
        if report is not None:
            report.update(b, b - a)

    workers = min(workers, len(chunks))
    try:
        if workers == 1:
            global _JOB
            saved, _JOB = _JOB, job
            try:
                for a, b in chunks:
                    done(a, b, _work(*args(a, b)))
            finally:
                _JOB = saved
            return rec
        # fork on Linux: workers start at once and inherit ``job`` without pickling it, and no helper
        # process (forkserver, resource tracker) outlives the pool. Safe here: the parent runs no
        # OpenCV or torch work while forking, and the workers use neither torch nor OpenCV threads.
        # Elsewhere (macOS, Windows) fork is unsafe or missing: spawn.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        ex = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(job,))
        try:
            pending: dict = {}
            it = iter(chunks)
            while True:
                # A bounded window of chunks in flight: Ctrl-C waits for at most these.
                while len(pending) < 2 * workers:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    pending[ex.submit(_work, *args(*nxt))] = nxt
                if not pending:
                    break
                finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    a, b = pending.pop(fut)
                    done(a, b, fut.result())
        except concurrent.futures.process.BrokenProcessPool:
            raise DataError(
                f"{job.out}: a generator process died (killed, or out of memory); rerun the same command to resume"
            ) from None
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return rec
    finally:
        if report is not None:
            report.close()


