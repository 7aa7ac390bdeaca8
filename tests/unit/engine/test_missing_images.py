"""Split.missing (images no prediction could get right, like an SVHN test number longer than the
label slots) counts in evaluation as errors: a hand-worked case with a reader that gets every fed
image right, so that the error is exactly missing / (fed + missing)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from attn.data.base import BatchLoader, DataSpec, Split, TaskData
from attn.engine.passes import evaluate

SPEC = DataSpec(1, 2, 2, 11, ("<end>",) + tuple("1234567890"), max_tokens=3, end_token=0)


class Reader(nn.Module):
    """Reads the label it was given for each image: image i is filled with the value i."""

    def __init__(self, labels: torch.Tensor):
        super().__init__()
        self.labels = labels

    def forward(self, x, policy="mean", generator=None, copies=1, num_slots=None):
        index = (x[:, 0, 0, 0] * 255.0).round().long()  # data.mean 0, std 1: pixels are value / 255
        tokens = self.labels[index][:, :num_slots].clamp_min(0)  # padding reads as the end token
        return SimpleNamespace(log_probs=torch.log_softmax(20.0 * nn.functional.one_hot(tokens, 11).float(), -1))


@pytest.mark.parametrize("missing", [0, 3])
def test_missing_images_count_as_errors(missing):
    labels = torch.tensor([[1, 2, 0], [5, 0, -100], [3, 3, 0], [10, 0, -100]] * 5)
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    split = Split(images, labels, torch.arange(20), missing=missing)
    data = TaskData(SPEC, split, split, split, mean=0.0, std=1.0)
    out = evaluate(Reader(labels), BatchLoader(split, 8, shuffle=False), data, device=torch.device("cpu"))
    assert out["count"] == 20 + missing
    assert out["error"] == pytest.approx(100.0 * missing / (20 + missing))
    assert split.head(10).missing == 0 and split.head(20).missing == missing
