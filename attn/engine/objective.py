"""What a task asks of the model: one label per image, or a sequence of tokens. Chosen from the
data spec by :func:`objective_for`, it is the one place that knows the difference, so that the
training loop, evaluation, tables, pictures and the eval command do not branch on it.

An objective says how to run the model on a label batch (:meth:`~Objective.slots`), the loss
(:meth:`~Objective.loss`), the per-batch evaluation sums (:meth:`~Objective.score_batch`, in the order
of :data:`EVAL_SUMS`), what "error" means and which extra scores a pass reports, whether a prediction
is right, how a label prints, and the per-split table a test pass fills (:class:`ClassTable`: accuracy
per class; :class:`LengthTable`: accuracy per label length and slot).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from attn.data.base import IGNORE_INDEX, DataSpec
from attn.losses import LossTerms, hybrid_loss, sequence_hybrid_loss, sequence_outcome

EVAL_SUMS = ("nll", "tokens", "correct", "tokens_correct", "digits_correct", "digits", "reward", "count")
"""The sums an evaluation pass accumulates per batch, in this order."""


def metric_name(name: str) -> str:
    """A class name as (part of) an MLflow metric key: letters, digits and ``_-. /`` only."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name) or "_"


class Objective:
    """Classification (:class:`Classification`) or sequences (:class:`Sequences`) over ``spec``."""

    error_name = "error"
    extra_scores: tuple[str, ...] = ()
    """Scores a pass reports besides error and nll (the sequence scores)."""

    def __init__(self, spec: DataSpec):
        self.spec = spec

    def slots(self, labels: torch.Tensor) -> dict:
        """Model keyword arguments for a label batch."""
        return {}

    def all_slots(self) -> dict:
        """Model keyword arguments for an episode that reads every label slot."""
        return {}

    def loss(self, episode, targets: torch.Tensor, rl_coef: float) -> LossTerms:
        raise NotImplementedError

    def score_batch(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def canonical(self, tokens: torch.Tensor) -> torch.Tensor:
        """Classes (B,) as they are; tokens (B, L) with the leading ``spec.unordered_slots`` sorted, so that
        a prediction and a label holding the same set there compare equal whatever order each reads it in."""
        u = self.spec.unordered_slots
        if not u or tokens.dim() < 2:
            return tokens
        return torch.cat([tokens[:, :u].sort(dim=1).values, tokens[:, u:]], dim=1)

    def predict(self, log_probs: torch.Tensor) -> torch.Tensor:
        """The predicted classes (B,) or tokens (B, L), :meth:`canonical`: the most probable in each
        slot, the leading ``spec.unordered_slots`` sorted (compare them with canonical labels)."""
        return self.canonical(log_probs.argmax(-1))

    def train_extras(self, total: dict[str, float], count: float) -> dict[str, float]:
        """Metrics of a training pass besides loss, accuracy and error, from its sums."""
        return {}

    def eval_extras(self, total: dict[str, float], count: float) -> dict[str, float]:
        """Metrics of an evaluation pass besides nll, accuracy and error, from its sums (EVAL_SUMS)."""
        return {}

    def correct(self, pred: Sequence[int], truth: Sequence[int]) -> bool:
        raise NotImplementedError

    def label_text(self, tokens: Sequence[int]) -> str:
        raise NotImplementedError

    def table(self, device: torch.device):
        """A new, empty per-split table to fill during a test pass."""
        raise NotImplementedError


class Classification(Objective):
    """One label per image: log_probs (B, C), targets (B,); reward 1 for a right class."""

    def loss(self, episode, targets, rl_coef):
        return hybrid_loss(episode, targets, rl_coef)

    def score_batch(self, log_probs, targets):
        nll = F.nll_loss(log_probs, targets, reduction="sum")
        correct = (self.predict(log_probs) == targets).sum().to(nll.dtype)
        one = torch.tensor(float(targets.shape[0]), device=nll.device, dtype=nll.dtype)
        return torch.stack([nll, one, correct, correct, correct, one, correct, one])

    def correct(self, pred, truth):
        return int(pred[0]) == int(truth[0])

    def label_text(self, tokens):
        return self.spec.class_names[int(tokens[0])]

    def table(self, device):
        return ClassTable(self.spec, device)


class Sequences(Objective):
    """Token sequences ending in ``spec.end_token``: log_probs (B, L, C), targets (B, L') padded with
    IGNORE_INDEX (L' >= L, the slots beyond L padding only); reward R = leading tokens right.
    token_loss (``train.token_loss``): "leading" trains the classifier on the slots up to the first
    wrong token, "all" on every label token."""

    error_name = "sequence error"
    extra_scores = ("token_accuracy", "digit_accuracy", "reward")

    def __init__(self, spec: DataSpec, token_loss: str = "leading"):
        super().__init__(spec)
        self.all_tokens = token_loss == "all"

    def slots(self, labels):
        """The batch's longest label (at least 1 slot), read from the host copy of the labels (numpy,
        so that training never waits on the device for it)."""
        valid = labels.numpy() >= 0 if labels.device.type == "cpu" else (labels >= 0).cpu().numpy()
        return {"num_slots": max(int(valid.sum(axis=1).max()), 1)}

    def all_slots(self):
        return {"num_slots": self.spec.max_tokens}

    def loss(self, episode, targets, rl_coef):
        return sequence_hybrid_loss(episode, targets, rl_coef, self.spec.end_token, self.all_tokens)

    def score_batch(self, log_probs, targets):
        """nll sums over label tokens; digits are the tokens other than the end token."""
        end = self.spec.end_token
        y = targets[:, : log_probs.shape[1]]
        out = sequence_outcome(self.predict(log_probs), self.canonical(y), end)
        nll = F.nll_loss(log_probs.transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="sum")
        digit = out.valid & (y != end)
        parts = [out.valid.sum(), out.correct.sum(), out.token_correct.sum(), (out.token_correct & digit).sum(),
                 digit.sum(), out.reward.sum()]
        return torch.stack([nll] + [t.to(nll.dtype) for t in parts] + [nll.new_tensor(float(targets.shape[0]))])

    def train_extras(self, total, count):
        return {
            "reward": total["reward"] / count,
            "token_accuracy": total["tokens_correct"] / max(total["tokens"], 1.0),
            "glimpses_per_image": total["glimpses"] / count,
        }

    def eval_extras(self, total, count):
        return {
            "token_accuracy": total["tokens_correct"] / max(total["tokens"], 1.0),
            "digit_accuracy": total["digits_correct"] / max(total["digits"], 1.0),
            "reward": total["reward"] / count,
        }

    def correct(self, pred, truth):
        """pred: a predicted sequence, in the order it was read or :meth:`predict`'s; truth: its label as
        stored. The leading ``spec.unordered_slots`` of both compare as sets."""
        end, u = self.spec.end_token, self.spec.unordered_slots
        pred, truth = sorted(pred[:u]) + list(pred[u:]), sorted(truth[:u]) + list(truth[u:])
        n = next((i for i, t in enumerate(truth) if t == end), len(truth) - 1) + 1
        return list(pred[:n]) == list(truth[:n])

    def label_text(self, tokens):
        """The tokens up to (not including) the end token, joined without spaces when every name is
        one character (digits), else with spaces."""
        names, end = self.spec.class_names, self.spec.end_token
        out = []
        for t in tokens:
            t = int(t)
            if t < 0 or t == end:
                break
            out.append(names[t] if t < len(names) else "?")
        sep = "" if all(len(n) == 1 for n in names if n != names[end]) else " "
        return sep.join(out) or "(empty)"

    def table(self, device):
        return LengthTable(self.spec, device)


def objective_for(spec: DataSpec, token_loss: str = "leading") -> Objective:
    """The objective of ``spec``'s task; ``token_loss`` (``train.token_loss``) matters to sequences only
    (a classification label is one token)."""
    return Sequences(spec, token_loss) if spec.end_token is not None else Classification(spec)


def _all_reduce_(tensors: list[torch.Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)


class ClassTable:
    """Classification: ``confusion`` (C, C) [true class, predicted class] counts of a split."""

    stem = "class_accuracy"

    def __init__(self, spec: DataSpec, device: torch.device):
        self.spec = spec
        C = spec.num_classes
        self.confusion = torch.zeros(C, C, dtype=torch.float64, device=device)

    def add(self, pred: torch.Tensor, targets: torch.Tensor) -> None:
        """pred, targets: (B,) class indices."""
        C = self.spec.num_classes
        ones = torch.ones(len(targets), dtype=torch.float64, device=pred.device)
        self.confusion.view(-1).index_add_(0, targets * C + pred, ones)

    def reduce(self) -> None:
        _all_reduce_([self.confusion])

    def class_accuracy(self) -> dict[str, float]:
        """Share of each class's images classified right, by class name (NaN where the split has none)."""
        per, right = self.confusion.sum(dim=1), self.confusion.diagonal()
        return {name: float(right[i] / per[i]) if per[i] > 0 else float("nan")
                for i, name in enumerate(self.spec.class_names)}

    def rows(self) -> list[dict]:
        counts = self.confusion.sum(dim=1).tolist()
        return [{"class": name, "images": int(c), "accuracy": a}
                for (name, a), c in zip(self.class_accuracy().items(), counts)]

    def title(self, split: str) -> str:
        return f"{split} accuracy per class (mean policy)"

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>_accuracy.<class name>`` for every class the split holds."""
        return {f"{prefix}_accuracy.{metric_name(k)}": v for k, v in self.class_accuracy().items() if not math.isnan(v)}


class LengthTable:
    """Sequences (labels y_1 .. y_n, end token; n = the label's length without the end token):

    length_images (L,) images per n; length_right (L,) those whose whole label was read right;
    slot_right (L, L) per n and slot j <= n, images whose token j was read right (j = n: the end).
    """

    stem = "sequence_accuracy"

    def __init__(self, spec: DataSpec, device: torch.device):
        self.spec = spec
        L = spec.max_tokens
        f64 = dict(dtype=torch.float64, device=device)
        self.length_images, self.length_right = torch.zeros(L, **f64), torch.zeros(L, **f64)
        self.slot_right = torch.zeros(L, L, **f64)

    def add(self, pred: torch.Tensor, targets: torch.Tensor) -> None:
        """pred (B, L) tokens; targets (B, L') padded with IGNORE_INDEX."""
        L = self.spec.max_tokens
        yt = targets[:, : pred.shape[1]]
        valid = yt >= 0
        n = valid.sum(dim=1) - 1  # digits (tokens before the end token)
        token_ok = (pred == yt) & valid
        whole = token_ok.sum(dim=1) == valid.sum(dim=1)
        f64 = torch.float64
        self.length_images.index_add_(0, n, torch.ones_like(n, dtype=f64))
        self.length_right.index_add_(0, n, whole.to(f64))
        # token j of an image with n digits -> row n, column j
        rows = n[:, None].expand_as(valid)
        cols = torch.arange(valid.shape[1], device=n.device)[None, :].expand_as(valid)
        self.slot_right.view(-1).index_add_(0, (rows * L + cols)[valid], token_ok[valid].to(f64))

    def reduce(self) -> None:
        _all_reduce_([self.length_images, self.length_right, self.slot_right])

    def rows(self) -> list[dict]:
        """One row per label length n present: images, sequence accuracy, and the accuracy of each
        slot (digit 1 .. n, then the end token)."""
        present = [n for n in range(self.spec.max_tokens) if self.length_images[n] > 0]
        longest = max(present, default=0)
        rows = []
        for n in present:
            count = float(self.length_images[n])
            row = {"length": n, "images": int(count), "sequence_accuracy": float(self.length_right[n]) / count}
            for j in range(longest):
                row[f"slot_{j + 1}"] = float(self.slot_right[n, j]) / count if j < n else float("nan")
            row["end"] = float(self.slot_right[n, n]) / count
            rows.append(row)
        return rows

    def title(self, split: str) -> str:
        return f"{split} accuracy by label length (slot_j: the j-th token; end: the end token)"

    def metrics(self, prefix: str) -> dict[str, float]:
        return {}

