"""Validating a raw config against the schema, with one sentence per problem.

Pydantic's errors name locations through the variants (``data.svhn.canvas_size``); these are read
back into the user's dotted keys, and a key of another variant is named as such: ``data.canvas_size =
186 does not apply to data.task 'svhn' (only to 'svhn_background'); remove it or change data.task``.
A ``sweep`` section is checked further: every searched key must exist, and every choice (or both ends
of every range) must give a valid config.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError

from attn.config.data import DATA_VARIANTS
from attn.config.model import UNIONS as MODEL_UNIONS
from attn.config.schema import ExperimentConfig, SweepConfig
from attn.errors import ConfigError

UNIONS = {"data": ("task", DATA_VARIANTS), **MODEL_UNIONS}
"""Dotted section -> (its selector key, selector value -> variant)."""
_TAGS = {section: set(variants) | ({"recurrent"} if section == "model.core" else set())
         for section, (_, variants) in UNIONS.items()}
_DEFAULT_SELECTOR = {"data": "mnist", "model": "ram", "model.context": "cnn"}


def _quoted(values: list[str]) -> str:
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _selector_value(section: str, node: Any, raw: dict[str, Any]) -> str:
    """The variant a section's raw input chooses (its selector, else the default)."""
    selector = UNIONS[section][0]
    value = node.get(selector) if isinstance(node, dict) else None
    if value is not None:
        return value
    if section == "model.core":
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        return "lstm" if model.get("name") == "dram" else "rnn"
    return _DEFAULT_SELECTOR[section]


def _read_loc(loc: tuple, raw: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(the dotted key's parts without variant tags, {union section: the variant chosen})."""
    path: list[str] = []
    chosen: dict[str, str] = {}
    node: Any = raw
    i = 0
    while i < len(loc):
        part = str(loc[i])
        path.append(part)
        node = node.get(part) if isinstance(node, dict) else None
        section = ".".join(path)
        if section in UNIONS:
            chosen[section] = _selector_value(section, node, raw)
            if i + 1 < len(loc) and str(loc[i + 1]) in _TAGS[section]:
                i += 1
        i += 1
    return path, chosen


def _section_class(path: list[str], chosen: dict[str, str]) -> Optional[type[BaseModel]]:
    """The schema class of the section at ``path`` (variants as ``chosen``)."""
    cls: Any = ExperimentConfig
    for n, part in enumerate(path):
        field = cls.model_fields.get(part) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return None
        section = ".".join(path[: n + 1])
        if section in UNIONS:
            cls = UNIONS[section][1].get(chosen.get(section, ""))
            continue
        ann = field.annotation
        if typing.get_origin(ann) is dict:
            return None
        cls = next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return cls


def _inapplicable(path: list[str], chosen: dict[str, str], value: Any) -> Optional[str]:
    """The sentence for a key that belongs to another variant of its section, or None."""
    section, key = ".".join(path[:-1]), path[-1]
    if section not in UNIONS:
        return None
    selector, variants = UNIONS[section]
    owners = sorted({name for name, cls in variants.items() if key in cls.model_fields})
    if not owners:
        return None
    here = chosen[section]
    shown = value.model_dump() if isinstance(value, BaseModel) else value
    hint = getattr(variants.get(here), "key_hints", {}).get(key)
    hint = hint.format(task=here) if hint else None
    return (f"{section}.{key} = {shown!r} does not apply to {section}.{selector} {here!r} (only to "
            f"{', '.join(map(repr, owners))}); {hint + '; ' if hint else ''}remove it or change {section}.{selector}")


def _describe_error(err: dict[str, Any]) -> str:
    msg = err.get("msg", "invalid value")
    ctx = err.get("ctx") or {}
    if err.get("type") == "literal_error" and "expected" in ctx:
        return f"allowed values are {ctx['expected']}"
    if err.get("type") == "value_error":
        return msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else msg


def _sentence(err: dict[str, Any], raw: dict[str, Any], source: str, more: int) -> str:
    path, chosen = _read_loc(tuple(err.get("loc", ())), raw)
    key = ".".join(path) if path else "(top level)"
    what = _describe_error(err)
    kind = err.get("type")
    if kind == "value_error" and re.match(r"(data|model|train|eval|ray|tracking|sweep)\.", what):
        return f"{source}: {what}"  # cross-field checks name their keys themselves
    if kind == "union_tag_invalid" and key in UNIONS:
        selector, variants = UNIONS[key]
        return (f"{source}: key '{key}.{selector}' = {err['ctx']['tag']!r} is invalid: allowed values are "
                f"{_quoted(list(variants))}")
    if kind == "extra_forbidden":
        inapplicable = _inapplicable(path, chosen, err.get("input"))
        if inapplicable:
            return f"{source}: {inapplicable}"
        section = _section_class(path[:-1], chosen)
        allowed = sorted(f.alias or n for n, f in section.model_fields.items()) if section is not None else []
        hint = f"; valid keys here: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key '{key}'{hint}"
    value = err.get("input")
    shown = "" if not path or isinstance(value, dict) else f" = {value!r}"
    return f"{source}: key '{key}'{shown} is invalid: {what}{f' (and {more} more problem(s))' if more else ''}"


def _is_default(cls: type[BaseModel], key: str, value: Any) -> bool:
    field = cls.model_fields[key]
    try:
        return TypeAdapter(field.annotation).validate_python(value) == field.get_default(call_default_factory=True)
    except (ValidationError, TypeError, ValueError):
        return False


def _drop_idle_keys(raw: dict[str, Any], node: Any = None, prefix: str = "") -> None:
    """Keys of another variant that hold that variant's default say nothing and are dropped (a file
    built on a gtrxl base that a sweep or an override switches to gpt2, a config saved with every
    task's keys); a key of another variant set to anything else stays, for the variant to refuse."""
    node = raw if node is None else node
    for name, value in list(node.items()):
        section = f"{prefix}{name}"
        if not isinstance(value, dict):
            continue
        _drop_idle_keys(raw, value, f"{section}.")  # inner sections first: their idle keys go before this one is judged
        if section in UNIONS:
            selector, variants = UNIONS[section]
            selected = _selector_value(section, value, raw)
            # a selector that is not a name (a list, a number) is left for validation to refuse
            chosen = variants.get(selected) if isinstance(selected, str) else None
            if chosen is not None:
                for key in [k for k in value if k not in chosen.model_fields]:
                    owners = [cls for cls in variants.values() if key in cls.model_fields]
                    if owners and any(_is_default(cls, key, value[key]) for cls in owners):
                        del value[key]


def _validate(raw: dict[str, Any], source: str) -> ExperimentConfig:
    raw = copy.deepcopy(raw)
    _drop_idle_keys(raw)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        raise ConfigError(_sentence(errors[0], raw, source, len(errors) - 1)) from None


def validate_config(raw: dict[str, Any], source: str) -> ExperimentConfig:
    """Validate a nested dict against the schema; raise :class:`ConfigError` with one clear line."""
    cfg = _validate(raw, source)
    if cfg.sweep is not None:
        _check_space(raw, cfg.sweep, source)
    return cfg


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw['a']['b']['c'] = value for dotted = 'a.b.c', creating sections on the way."""
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def _leaf_keys(model: Any = ExperimentConfig, prefix: str = "") -> set[str]:
    """Every dotted key of the schema that holds a value (not a section), in any variant."""
    out = set()
    for name, field in model.model_fields.items():
        section = f"{prefix}{name}"
        if section in UNIONS:
            for cls in set(UNIONS[section][1].values()):
                out |= _leaf_keys(cls, f"{section}.")
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _leaf_keys(ann, f"{section}.")
        elif name != "sweep":
            out.add(section)
    return out


def _check_space(raw: dict[str, Any], sweep: SweepConfig, source: str) -> None:
    leaves = _leaf_keys()
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for key, dim in sweep.space.items():
        if key not in leaves:
            near = sorted(k for k in leaves if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1])
            hint = f"; did you mean {', '.join(near)}" if near else ""
            raise ConfigError(f"{source}: sweep.space: '{key}' is not a config key{hint}")
        for value in dim.candidates():
            trial = copy.deepcopy(base)
            for cond, allowed in (dim.when or {}).items():
                set_key(trial, cond, allowed[0])
            set_key(trial, key, value)
            try:
                _validate(trial, source)
            except ConfigError as exc:
                why = str(exc).removeprefix(f"{source}: ")
                raise ConfigError(f"{source}: sweep.space.{key}: the value {value!r} makes an invalid config: {why}") from None
