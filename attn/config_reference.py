"""The configuration reference (``docs/configuration.md``), written from the schema itself.

Every row comes from a field of :class:`attn.config.ExperimentConfig`: its dotted key, type, default,
bounds and ``description=``; a section's docstring heads its table. The file is never edited by hand:
``python -m attn.config_reference`` rewrites it, and a test fails when it differs from :func:`render`.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from attn.config import ExperimentConfig, SearchDim

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_HEADER = """# Configuration reference

Generated from the schema (`attn/config.py`) by `python -m attn.config_reference`; do not edit by hand
(a test fails when this file and the schema differ).

An experiment file is YAML with these sections; `key=value` arguments after the file override any key
(`train.lr=1e-3`, `model.core.kind=lstm`, `data.target_size=[40,40]`), and `base: other.yaml` at the
top of a file starts from another file. Unknown keys, wrong types, values out of range and keys that do
not apply to the chosen task, model, core or context stop the program before any work with one line
naming the file, the key and what is allowed. A description that starts with a task, model or core
name (`svhn:`, `dram:`, `gtrxl`) applies only there.
"""


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The section class behind ``annotation`` (``X`` or ``Optional[X]``), if it is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is Union:
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (tuple, list, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _bounds(info: FieldInfo) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}
    parts = []
    for meta in info.metadata:
        for attr, sign in signs.items():
            value = getattr(meta, attr, None)
            if value is not None and isinstance(meta, annotated_types.BaseMetadata):
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined:
        return "required" if info.default_factory is None else "(section)"
    value = info.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, bounds, description) for every leaf field, depth first."""
    for name, info in model.model_fields.items():
        key = f"{prefix}.{info.alias or name}" if prefix else (info.alias or name)
        inner = _inner_model(info.annotation)
        if inner is not None and inner is not SearchDim:
            yield from _rows(inner, key)
            continue
        if info.annotation == dict[str, SearchDim]:
            yield key, "mapping of key -> search dimension", _default(info), "", (info.description or "")
            yield from _rows(SearchDim, f"{key}.<key>")
            continue
        yield key, _type_name(info.annotation), _default(info), _bounds(info), " ".join((info.description or "").split())


def _section_doc(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    if not doc or doc.startswith("Base of every config section"):
        return ""
    return " ".join(doc.split("\n\n")[0].split()) + "\n\n"


def render() -> str:
    """The whole reference as Markdown."""
    out = [_HEADER]
    for name, info in ExperimentConfig.model_fields.items():
        section = _inner_model(info.annotation)
        out.append(f"\n## `{name}`\n\n")
        if info.description:
            out.append(" ".join(info.description.split()) + "\n\n")
        out.append(_section_doc(section))
        out.append("| key | type | default | bounds | what |\n|---|---|---|---|---|\n")
        for key, type_name, default, bounds, what in _rows(section, name):
            out.append(f"| `{key}` | {type_name} | {default} | {bounds} | {what.replace('|', chr(92) + '|')} |\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn.config_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=Path, default=DOC_PATH, help="where to write (default: docs/configuration.md)")
    parser.add_argument("--check", action="store_true", help="only say whether the file is current (exit 1 if not)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.to.is_file() and args.to.read_text(encoding="utf-8") == text
        print(f"{args.to}: {'current' if current else 'stale: run python -m attn.config_reference'}")
        return 0 if current else 1
    args.to.write_text(text, encoding="utf-8")
    print(f"wrote {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
