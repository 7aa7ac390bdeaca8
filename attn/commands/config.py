"""``python run.py config ...``: what an experiment file means before anything runs.

- ``config EXPERIMENT.yaml [key=value ...]``: the resolved experiment (every key, defaults filled in,
  ``base:`` chains and overrides applied) as YAML, the form a run stores with its MLflow run;
- ``config --keys [EXPERIMENT.yaml ...]``: every key with its type, default and description (with an
  experiment: only its variants' keys, with the values it resolves to);
- ``config --schema``: the JSON Schema of experiment files, for editors' completion and checks.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any, Iterator

from pydantic import BaseModel

from attn.config import ExperimentConfig, dump_config, load_config
from attn.errors import ConfigError


def config(args: argparse.Namespace) -> int:
    if args.schema:
        if args.experiment or args.keys:
            raise ConfigError("config --schema describes every experiment file: give it no experiment and no --keys")
        print(json.dumps(ExperimentConfig.model_json_schema(), indent=2))
        return 0
    if args.keys:
        lines = _resolved_keys(load_config(args.experiment, args.overrides)) if args.experiment else _every_key()
        print("\n".join(lines))
        return 0
    if not args.experiment:
        raise ConfigError("config: give an experiment file (e.g. experiments/mnist_ram.yaml), --keys or --schema")
    print(dump_config(load_config(args.experiment, args.overrides)), end="")
    return 0


def _plain(markdown: str) -> str:
    return markdown.replace("`", "").replace("\\|", "|")


def _entry(head: str, what: str) -> list[str]:
    body = textwrap.wrap(_plain(what), width=100, initial_indent="    ", subsequent_indent="    ")
    return [head, *body]


def _every_key() -> list[str]:
    from attn.config_reference import key_rows

    lines = []
    for key, type_name, default, what, where in key_rows():
        scope = f"; only {where}" if where else ""
        lines += _entry(f"{key} = {_plain(default)}  ({_plain(type_name)}{scope})", what)
    return lines


def _resolved_keys(cfg: ExperimentConfig) -> list[str]:
    lines = []
    for key, value, what in _leaves(cfg, ""):
        lines += _entry(f"{key} = {json.dumps(value)}", what)
    return lines


def _leaves(section: BaseModel, prefix: str) -> Iterator[tuple[str, Any, str]]:
    """(dotted key, value as JSON, description) of every key of a validated section, depth first."""
    dumped = section.model_dump(mode="json")
    for name, info in type(section).model_fields.items():
        key = f"{prefix}{info.alias or name}"
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, key + ".")
        else:
            yield key, dumped[name], info.description or ""
