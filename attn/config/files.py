"""Experiment files: YAML with ``base:`` chains, ``key=value`` overrides, and the dumped form.

:func:`load_config` reads a file, lays the overrides over it and validates the result
(:mod:`attn.config.validation`), naming the file in every error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from attn.config.schema import ExperimentConfig
from attn.config.validation import validate_config
from attn.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2: only true/false. PyYAML follows YAML 1.1, where on, off, yes
    and no are booleans too, so ``compile: off`` would read as false and fail its own option list
    (boolean keys still take yes/no/on/off: the schema reads those words as booleans)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str) -> Any:
    """Experiment YAML (files, overrides, dumped configs) -> Python values, booleans as in YAML 1.2."""
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], parsed value). Values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.lr=0.001")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': the key must be dotted names, e.g. train.lr=0.001")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in an experiment file. A top-level ``base: other.yaml`` (relative to the file) reads
    that file first and lays this one over it, section by section (a chain of files is allowed)."""
    if not path.is_file():
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"{path}: no such experiment file{where}")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the experiment file ({exc})") from None
    if raw is None or raw == {}:
        # an empty file (or one whose lines are all commented out) would silently train the defaults
        raise ConfigError(
            f"{path}: the experiment file is empty; give at least one section (data, model, train, ...) "
            "or start from a shipped one, e.g. experiments/mnist_ram.yaml"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, train, ...)")
    if "base" in raw:
        base = raw.pop("base")
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base must be the path of another experiment file, relative to this one")
        base_path = (path.parent / base).resolve()
        chain = _chain + (path.resolve(),)
        if base_path in chain:
            raise ConfigError(f"{path}: base {base} leads back to {base_path}: the files include each other")
        raw = _merge(read_yaml(base_path, chain), raw)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment, apply ``key=value`` overrides, validate; name the file in every error."""
    raw = read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        raw = apply_overrides(raw, list(overrides))
        source = f"{source} (with overrides {' '.join(overrides)})"
    cfg = validate_config(raw, source)
    if path is not None and cfg.tracking.experiment_name is None:
        cfg.tracking.experiment_name = Path(path).stem
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b': value}: the form MLflow params take."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
