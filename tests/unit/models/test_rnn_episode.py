"""The hand-written rnn episode (attn/models/rnn_episode.py) against RAM's generic autograd loop, in
float64: the same episode, the same loss and the same gradient for every parameter."""

from __future__ import annotations

import pytest
import torch

from attn.models import build_model
from attn.config import model_config
from attn.data.base import DataSpec
from attn.losses import hybrid_loss
from attn.models.ram import RAM
from helpers.episodes import assert_same_episode

GRAY = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))
RGB_WIDE = DataSpec(3, 21, 34, 5, tuple("abcde"))  # several channels, odd non-square canvas

CASES = {
    "default": (GRAY, {}, 16),
    "scales": (RGB_WIDE, {"retina": {"patch_size": 5, "num_scales": 3, "scale": 1.5}, "what_size": 24,
                          "where_size": 8, "hidden_size": 40, "num_glimpses": 5, "policy_std": 0.3}, 9),
    "two glimpses": (GRAY, {"num_glimpses": 2, "hidden_size": 32}, 7),
    "one glimpse": (GRAY, {"num_glimpses": 1, "hidden_size": 32}, 7),
    "centre start": (GRAY, {"initial_location": "center", "num_glimpses": 4, "hidden_size": 32}, 7),
}


def _run(model: RAM, x, y, hand_written: bool, **kwargs):
    model.hand_written = hand_written
    model.zero_grad(set_to_none=True)
    ep = model(x, generator=torch.Generator().manual_seed(5), **kwargs)
    loss = hybrid_loss(ep, y.repeat(kwargs.get("copies", 1)), rl_coef=0.7)
    loss.total.backward()
    return ep, loss.total.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("policy", ["sample", "mean"])
def test_same_episode_loss_and_gradients_as_the_generic_loop(case, policy):
    spec, options, batch = CASES[case]
    torch.manual_seed(0)
    model = build_model(model_config(**options), spec).double()
    assert model.hand_written  # rnn core, detached routing
    # Scale the weights up so that every ReLU cuts: the routing of gradients through zeros matters.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.randn(batch, spec.channels, spec.height, spec.width, dtype=torch.float64)
    y = torch.randint(0, spec.num_classes, (batch,))
    kwargs = {"policy": policy, "copies": 2} if policy == "mean" else {"policy": policy}
    reference = _run(model, x, y, hand_written=False, **kwargs)
    got = _run(model, x, y, hand_written=True, **kwargs)
    assert_same_episode(got, reference, 1e-12, (1e-10, 1e-12))
    got_grads = got[2]
    if model.num_glimpses > 1 and policy == "sample":  # every weight, the location net's included, learns
        assert all(g is not None and g.abs().sum() > 0 for g in got_grads.values())


@pytest.mark.parametrize(
    "options, expected",
    [({}, True), ({"policy_grad": "full"}, False), ({"core": {"kind": "lstm"}}, False),
     ({"core": {"kind": "gpt2"}}, False)],
)
def test_which_models_take_the_hand_written_episode(options, expected):
    assert build_model(model_config(num_glimpses=3, **options), GRAY).hand_written is expected


def test_no_graph_is_kept_without_gradients():
    model = build_model(model_config(num_glimpses=3, hidden_size=32), GRAY)
    with torch.no_grad():
        ep = model(torch.randn(4, 1, 28, 28))
    assert not ep.log_probs.requires_grad and ep.log_probs.grad_fn is None


def test_autocast_takes_the_loop():
    """The hand-written episode writes into buffers of the input's dtype; under autocast the loop,
    which casts op by op, must run instead (and give the autocast dtype)."""
    model = build_model(model_config(num_glimpses=3, hidden_size=32), GRAY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ep = model(torch.randn(4, 1, 28, 28))
    assert ep.log_probs.dtype == torch.bfloat16
    assert model.hand_written  # still the choice outside autocast
