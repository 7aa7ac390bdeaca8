"""Transfer: start a model from another model's weights (``train.init_from``), e.g. along the DRAM
paper's chain svhn 110 -> 186 -> 224 px canvases -> multinumber.

Every key of the new model ends in exactly one of four lists, all reported:

    loaded     same name, same shape: copied
    reshaped   positional tables (GPT-2's ``wpe``, rows = positions) of another length: the first
               min(n_source, n_new) rows copied, the rest kept at their initial values
    skipped    present in both but not copied, with the reason (another shape; the classifier when the
               class count changed or ``init_classifier`` is drop; the context network with
               ``init_context`` drop)
    new        absent from the source: kept at their initial values
and ``unused`` lists the source keys the new model does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

POSITIONAL_SUFFIXES = ("wpe.weight",)
"""Tables whose rows are positions (glimpse steps): copied row by row when the step count changes."""
CLASSIFIER_PREFIX = "classifier."
CONTEXT_PREFIX = "context."


@dataclass
class TransferReport:
    loaded: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)  # "key (source shape -> new shape)"
    skipped: list[str] = field(default_factory=list)  # "key: reason"
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.reshaped)} reshaped, {len(self.skipped)} skipped, "
            f"{len(self.new)} new (initialised), {len(self.unused)} source tensors unused"
        )

    def lines(self) -> list[str]:
        out = [self.summary()]
        out += [f"reshaped: {k}" for k in self.reshaped]
        out += [f"skipped: {k}" for k in self.skipped]
        out += [f"new: {k}" for k in self.new]
        out += [f"unused: {k}" for k in self.unused]
        return out

    def markdown(self, source: str) -> str:
        parts = [f"# Weights from {source}", "", self.summary(), ""]
        for title, keys in (("Reshaped", self.reshaped), ("Skipped", self.skipped), ("New (initialised)", self.new),
                            ("Source tensors not used", self.unused), ("Loaded", self.loaded)):
            parts += [f"## {title} ({len(keys)})", ""] + [f"- `{k}`" for k in keys] + [""]
        return "\n".join(parts)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


@torch.no_grad()
def transfer_weights(
    model: nn.Module, source: dict[str, torch.Tensor], *, context: str = "keep", classifier: str = "auto"
) -> TransferReport:
    """Copy what fits of ``source`` (a state dict) into ``model`` in place; see the module docstring.

    classifier: auto | keep | drop (keep raises ValueError when the shapes differ)."""
    report = TransferReport()
    target = model.state_dict()
    for key, value in target.items():
        if key not in source:
            report.new.append(key)
            continue
        src = source[key]
        if key.startswith(CONTEXT_PREFIX) and context == "drop":
            report.skipped.append(f"{key}: the context network is dropped (train.init_context = drop)")
        elif key.startswith(CLASSIFIER_PREFIX) and classifier == "drop":
            report.skipped.append(f"{key}: the classifier is dropped (train.init_classifier = drop)")
        elif src.shape == value.shape:
            value.copy_(src.to(value.dtype))
            report.loaded.append(key)
        elif key.startswith(CLASSIFIER_PREFIX):
            if classifier == "keep":
                raise ValueError(
                    f"train.init_classifier = keep, but the classifier's shape differs ({key}: source {_shape(src)}, "
                    f"now {_shape(value)}: another class count); use auto or drop"
                )
            report.skipped.append(f"{key}: class count changed (source {_shape(src)}, now {_shape(value)})")
        elif key.endswith(POSITIONAL_SUFFIXES) and src.ndim == value.ndim and src.shape[1:] == value.shape[1:]:
            n = min(src.shape[0], value.shape[0])
            value[:n].copy_(src[:n].to(value.dtype))
            report.reshaped.append(f"{key} ({_shape(src)} -> {_shape(value)}: first {n} positions)")
        else:
            report.skipped.append(f"{key}: shape differs (source {_shape(src)}, now {_shape(value)})")
    report.unused = sorted(set(source) - set(target))
    model.load_state_dict(target)
    return report
