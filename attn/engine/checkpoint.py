"""Self-contained checkpoints: a directory with ``state.pt`` (model, optimizer, scheduler, progress),
``best_model.pt`` (the weights with the best validation error so far) and ``config.yaml``.

Files are written to a temporary name and renamed into place, so a crash never leaves a half-written
file under the real name; they are read with ``torch.load(weights_only=True)`` (no arbitrary
unpickling) and mapped to CPU.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from attn.errors import CheckpointError
from attn.io import atomic_write

STATE_FILE = "state.pt"
BEST_FILE = "best_model.pt"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 1


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def save_checkpoint(directory: str | Path, state: dict[str, Any], best_model: dict[str, Any], config_yaml: str) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"format": FORMAT_VERSION, **state}, d / STATE_FILE)
    atomic_torch_save(best_model, d / BEST_FILE)
    atomic_write_text(config_yaml, d / CONFIG_FILE)
    return d


def load_file(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file safely; raise :class:`CheckpointError` naming the path if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an attn checkpoint (expected a dict of tensors)")
    return obj


def architecture_differences(saved_yaml: str, current_yaml: str) -> list[str]:
    """The keys that decide the weights' shapes (``model.*`` and ``data.task``) whose values differ,
    as ``key (checkpoint A, now B)``. Training keys (epochs, lr, ...) may change on resume."""
    from attn.config import flatten, load_yaml

    def shape_keys(text: str) -> dict[str, Any]:
        flat = flatten(load_yaml(text) or {})
        return {k: v for k, v in flat.items() if k.startswith("model.") or k == "data.task"}

    before, now = shape_keys(saved_yaml), shape_keys(current_yaml)
    # Only keys both configs hold: a config saved by an older attn also lists the keys of every other
    # variant (at their defaults); a real change of variant shows in the kind, name or task itself.
    return [
        f"{k} (checkpoint {before[k]!r}, now {now[k]!r})"
        for k in sorted(set(before) & set(now))
        if before[k] != now[k]
    ]


def load_checkpoint(directory: str | Path, expected_config: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, best_model) from a checkpoint directory written by :func:`save_checkpoint`.

    With ``expected_config`` (the YAML of the run about to continue), a checkpoint written under
    another architecture is refused, naming the keys that differ."""
    d = Path(directory)
    state = load_file(d / STATE_FILE)
    if state.get("format") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"{d / STATE_FILE}: not an attn checkpoint of format {FORMAT_VERSION}")
    if expected_config is not None and (d / CONFIG_FILE).is_file():
        try:
            differ = architecture_differences((d / CONFIG_FILE).read_text(), expected_config)
        except Exception as exc:  # noqa: BLE001 - a damaged config.yaml
            raise CheckpointError(f"{d / CONFIG_FILE}: unreadable ({str(exc).splitlines()[0][:200]})") from None
        if differ:
            raise CheckpointError(
                f"{d}: checkpoint of another model config: {'; '.join(differ[:6])}"
                f"{' ...' if len(differ) > 6 else ''}; continue it with its own config or start a new run"
            )
    return state, load_file(d / BEST_FILE)
