"""The shared cache helper (attn/data/cache.py) and atomic writes (attn/io.py), on real files."""

from __future__ import annotations

import pytest

from attn.data.cache import CacheKey, building, locked, partial_path
from attn.io import atomic_write, is_temp_name


def test_key_changes_with_options_and_source(tmp_path):
    key = CacheKey({"color": "gray", "size": 64}, {"sha256": "abc"})
    path = tmp_path / "key.json"
    key.write_json(path)
    stored = CacheKey.read_json(path)
    assert key.matches(stored)
    assert CacheKey({"color": "rgb", "size": 64}, {"sha256": "abc"}).option_changes(stored) == ["color"]
    assert CacheKey({"color": "gray", "size": 64}, {"sha256": "abd"}).source_changes(stored) == ["sha256"]
    assert not CacheKey({"color": "gray", "size": 64}, {"sha256": "abd"}).matches(stored)
    assert key.options_token() != CacheKey({"color": "rgb", "size": 64}).options_token()
    path.write_text("{not json")
    assert CacheKey.read_json(path) is None


def test_interrupted_build_keeps_partial_only_when_resumable(tmp_path):
    final = tmp_path / "c.bin"
    with pytest.raises(KeyboardInterrupt):
        with building(final, resumable=True) as partial:
            partial.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not final.exists() and partial_path(final).read_bytes() == b"half"
    with building(final, resumable=True) as partial:
        partial.write_bytes(partial.read_bytes() + b" and the rest")
    assert final.read_bytes() == b"half and the rest" and not partial_path(final).exists()
    with pytest.raises(RuntimeError):
        with building(final) as partial:
            partial.write_bytes(b"new")
            raise RuntimeError
    assert final.read_bytes() == b"half and the rest" and not partial_path(final).exists()


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"ne")
            raise OSError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with atomic_write(path) as tmp:
        assert is_temp_name(tmp.name)
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_lock_is_exclusive(tmp_path):
    import fcntl

    target = tmp_path / "c.h5"
    with locked(target, "test"):
        with open(tmp_path / ".c.h5.lock", "a+") as fh:
            with pytest.raises(OSError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".c.h5.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
