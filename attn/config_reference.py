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

from attn.config import UNIONS, ExperimentConfig, SearchDim

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_HEADER = """# Configuration reference

Generated from the schema (`attn/config/`) by `python -m attn.config_reference`; do not edit by hand
(a test fails when this file and the schema differ).

An experiment file is YAML with these sections; `key=value` arguments after the file override any key
(`train.lr=1e-3`, `model.core.kind=lstm`, `data.target_size=[40,40]`), and `base: other.yaml` at the
top of a file starts from another file. Unknown keys, wrong types, values out of range and keys that do
not apply to the chosen task, model, core or context stop the program before any work with one line
naming the file, the key and what is allowed. `data`, `model`, `model.core` and `model.context` are
variants: the keys every variant has come first, then each variant's own keys (`data.task`,
`model.name`, `model.core.kind` and `model.context.kind` choose the variant).
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


def _rows(model: type[BaseModel], prefix: str, skip: set[str] = frozenset()) -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, bounds, description) for every leaf field, depth first; union sections
    (rendered as sections of their own) and the names in ``skip`` are left out."""
    for name, info in model.model_fields.items():
        key = f"{prefix}.{info.alias or name}" if prefix else (info.alias or name)
        if key in UNIONS or name in skip:
            continue
        inner = _inner_model(info.annotation)
        if inner is not None and inner is not SearchDim:
            yield from _rows(inner, key)
            continue
        if info.annotation == dict[str, SearchDim]:
            yield key, "mapping of key -> search dimension", _default(info), "", (info.description or "")
            yield from _rows(SearchDim, f"{key}.<key>")
            continue
        yield key, _type_name(info.annotation), _default(info), _bounds(info), " ".join((info.description or "").split())


def _table(rows) -> str:
    out = "| key | type | default | bounds | what |\n|---|---|---|---|---|\n"
    for key, type_name, default, bounds, what in rows:
        out += f"| `{key}` | {type_name} | {default} | {bounds} | {what.replace('|', chr(92) + '|')} |\n"
    return out


def _union(section: str) -> str:
    """A variant section: the keys all variants share, then each variant's own."""
    selector, variants = UNIONS[section]
    names: dict[type[BaseModel], list[str]] = {}
    for name, cls in variants.items():
        names.setdefault(cls, []).append(name)
    classes = list(names)
    shared = [k for k in classes[0].model_fields if k != selector and all(k in c.model_fields for c in classes)]
    out = [f"\n## `{section}`\n\n", _section_doc(classes[0]),
           f"`{section}.{selector}` chooses the variant; the keys below the first table belong to one variant each.\n\n"]
    choose = (f"{section}.{selector}", " \\| ".join(f"`{n}`" for n in variants), f"`{_selector_default(section)}`", "",
              _selector_description(section))
    out.append(_table([choose, *_rows(_only(classes[0], shared), section)]))
    nested = [f"{section}.{k}" for c in classes for k in c.model_fields if f"{section}.{k}" in UNIONS]
    for cls, tags in names.items():
        own = [k for k in cls.model_fields if k not in shared and k != selector]
        rows = list(_rows(_only(cls, own), section))
        nested_here = [f"`{section}.{k}`" for k in cls.model_fields if f"{section}.{k}" in UNIONS]
        out.append(f"\n### `{section}.{selector}`: {', '.join(f'`{t}`' for t in tags)}\n\n")
        out.append(_table(rows) if rows else "No keys of its own.\n")
        if nested_here:
            out.append(f"\nAlso {', '.join(nested_here)} (below).\n")
    for inner in dict.fromkeys(nested):
        out.append(_union(inner))
    return "".join(out)


def _selector_description(section: str) -> str:
    """The description of the key that chooses ``section``'s variant (declared on a shared base class)."""
    selector, variants = UNIONS[section]
    first = next(iter(variants.values()))
    described = [c.model_fields[selector] for c in first.__mro__ if getattr(c, "__annotations__", {}).get(selector)]
    info = next((f for f in described if f.description), first.model_fields[selector])
    return " ".join((info.description or "").split())


def _variant_rows(section: str) -> list[tuple[str, str, str, str, str]]:
    """:func:`key_rows` of a variant section: the selector, then each key once, with the variants that
    have it (nested variant sections follow)."""
    selector, variants = UNIONS[section]
    choose = f"{section}.{selector}"
    found: dict[str, tuple[str, set[str], str]] = {}
    owners: dict[str, list[str]] = {}
    nested: list[str] = []
    for tag, cls in variants.items():
        for key, type_name, default, _, what in _rows(cls, section):
            if key != choose:
                found.setdefault(key, (type_name, set(), what))[1].add(default)
                owners.setdefault(key, []).append(tag)
        nested += [f"{section}.{k}" for k in cls.model_fields if f"{section}.{k}" in UNIONS]
    rows = [(choose, " | ".join(variants), _selector_default(section), _selector_description(section), "")]
    for key, (type_name, defaults, what) in found.items():
        where = "" if len(owners[key]) == len(variants) else f"{choose}: {', '.join(owners[key])}"
        default = next(iter(defaults)) if len(defaults) == 1 else f"depends on {choose}"
        rows.append((key, type_name, default, what, where))
    for inner in dict.fromkeys(nested):
        rows += _variant_rows(inner)
    return rows


def key_rows() -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, description, where) of every key of every section and variant, in the
    reference's order; ``where`` names the variants a key belongs to ('' when all have it)."""
    rows: list[tuple[str, str, str, str, str]] = []
    for name, info in ExperimentConfig.model_fields.items():
        if name in UNIONS:
            rows += _variant_rows(name)
        else:
            rows += [(k, t, d, w, "") for k, t, d, _, w in _rows(_inner_model(info.annotation), name)]
    return rows


def _selector_default(section: str) -> str:
    return {"data": "mnist", "model": "ram", "model.core": "rnn for ram, lstm for dram", "model.context": "cnn"}[section]


def _only(cls: type[BaseModel], keep: list[str]) -> type[BaseModel]:
    """A stand-in class exposing only ``keep`` of ``cls``'s fields, in order (for :func:`_rows`)."""

    class View:
        model_fields = {k: cls.model_fields[k] for k in keep}

    return View  # type: ignore[return-value]


def _section_doc(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    if not doc or doc.startswith("Base of every config section"):
        return ""
    return " ".join(doc.split("\n\n")[0].split()) + "\n\n"


def render() -> str:
    """The whole reference as Markdown."""
    out = [_HEADER]
    for name, info in ExperimentConfig.model_fields.items():
        if name in UNIONS:
            out.append(_union(name))
            continue
        section = _inner_model(info.annotation)
        out.append(f"\n## `{name}`\n\n")
        if info.description:
            out.append(" ".join(info.description.split()) + "\n\n")
        out.append(_section_doc(section))
        out.append(_table(_rows(section, name)))
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
