"""The hybrid loss: hand-worked values, and which parameters each term's gradient reaches."""

from __future__ import annotations

import math

import pytest
import torch

from attn.models import build_model
from attn.config import model_config
from attn.data.base import DataSpec
from attn.losses import baseline_loss, hybrid_loss, reinforce_loss
from attn.models.policy import gaussian_log_prob
from attn.models.ram import RAM, Episode

SPEC = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))


def test_reinforce_hand_worked():
    # B = 2, two steps. Sample 0: R = 1, b = (0.25, 0.5); sample 1: R = 0, b = (0.5, 0.0).
    log_pi = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]], requires_grad=True)
    reward = torch.tensor([1.0, 0.0])
    base = torch.tensor([[0.25, 0.5], [0.5, 0.0]], requires_grad=True)
    loss = reinforce_loss(log_pi, reward, base)
    # sample 0: -(-1 * 0.75) - (-2 * 0.5) = 0.75 + 1.0 = 1.75
    # sample 1: -(-0.5 * -0.5) - (-4 * 0) = -0.25
    assert loss.item() == pytest.approx((1.75 - 0.25) / 2)
    loss.backward()
    # d/d log_pi = -(R - b) / B; the baseline is a constant here.
    assert log_pi.grad.tolist() == [[-0.375, -0.25], [0.25, 0.0]]
    assert base.grad is None


def test_reinforce_mask():
    log_pi = torch.tensor([[-1.0, -2.0]])
    loss = reinforce_loss(log_pi, torch.tensor([1.0]), torch.zeros(1, 2), mask=torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(1.0)


def test_baseline_loss_hand_worked():
    b = torch.tensor([[0.25, 0.5], [0.5, 0.0]])
    # (0.75^2 + 0.5^2 + 0.5^2 + 0^2) / 4
    assert baseline_loss(b, torch.tensor([1.0, 0.0])).item() == pytest.approx((0.5625 + 0.25 + 0.25) / 4)


def test_gaussian_log_prob_float64():
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(5, 2, dtype=torch.float64, generator=gen) * 2 - 1
    x = mu + 0.1 * torch.randn(5, 2, dtype=torch.float64, generator=gen)
    want = torch.distributions.Normal(mu, 0.1).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(x, mu, 0.1), want, rtol=1e-12, atol=1e-12)


def test_hybrid_loss_total_hand_worked():
    log_probs = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    ep = Episode(log_probs, torch.tensor([[-1.0], [-2.0]]), torch.tensor([[0.5], [0.5]]), torch.zeros(2, 2, 2))
    t = hybrid_loss(ep, torch.tensor([0, 1]), rl_coef=0.1)
    nll = -(math.log(0.7) + math.log(0.3)) / 2
    base = (0.25 + 0.25) / 2  # R = (1, 0)
    rl = (-(-1.0) * 0.5 + -(-2.0) * (-0.5)) / 2
    assert t.correct.tolist() == [True, False]
    assert t.total.item() == pytest.approx(nll + base + 0.1 * rl)


def _grads_of(model: RAM, loss: torch.Tensor) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}


def _groups(flags: dict[str, bool]) -> set[str]:
    return {n.split(".")[0] for n, on in flags.items() if on}


@pytest.mark.parametrize("core", ["rnn", "lstm"])
def test_gradient_routing_detached(core):
    torch.manual_seed(0)
    model = build_model(model_config(core={"kind": core}, num_glimpses=4), SPEC)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    t = hybrid_loss(model(x), y, rl_coef=1.0)
    # Classification: glimpse net, core and classifier -- never the location or baseline nets.
    assert _groups(_grads_of(model, t.nll)) == {"glimpse", "core", "classifier"}
    # REINFORCE: only the location net (its input is a detached state, the baseline a constant).
    assert _groups(_grads_of(model, t.reinforce)) == {"locator"}
    # Baseline regression: only the baseline head.
    assert _groups(_grads_of(model, t.baseline)) == {"baseline"}
    # Together every parameter learns.
    flags = _grads_of(model, t.total)
    assert all(flags.values()), [n for n, on in flags.items() if not on]


def test_gradient_routing_full():
    torch.manual_seed(0)
    model = build_model(model_config(num_glimpses=4, policy_grad="full"), SPEC)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    t = hybrid_loss(model(x), y, rl_coef=1.0)
    assert _groups(_grads_of(model, t.reinforce)) == {"locator", "core", "glimpse"}
    assert _groups(_grads_of(model, t.nll)) == {"glimpse", "core", "classifier"}


def test_episode_shapes_and_log_pi_of_used_locations():
    torch.manual_seed(0)
    T, B = 5, 8
    model = build_model(model_config(num_glimpses=T, policy_std=0.2), SPEC)
    ep = model(torch.randn(B, 1, 28, 28))
    assert ep.log_probs.shape == (B, 10)
    assert ep.log_pi.shape == ep.baselines.shape == (B, T - 1)
    assert ep.locations.shape == (B, T, 2)
    # Mean policy: l_t = mu_t exactly, so every log pi is the Gaussian's log density at its mode.
    mean = model(torch.randn(B, 1, 28, 28), policy="mean")
    mode = 2 * (-math.log(0.2) - 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(mean.log_pi, torch.full((B, T - 1), mode))


def test_log_pi_scores_the_location_the_retina_used():
    """Re-run the episode by hand from the recorded locations: the retina must have read exactly
    those locations, and log pi must score exactly those samples under mu(h_t)."""
    torch.manual_seed(0)
    T, B = 4, 6
    model = build_model(model_config(num_glimpses=T, policy_std=0.3), SPEC).double()
    x = torch.randn(B, 1, 28, 28, dtype=torch.float64)
    ep = model(x)
    padded = model.retina.pad(x)
    state = model.core.init_state(B, x.device, x.dtype)
    for t in range(T):
        loc = ep.locations[:, t]
        g = model.glimpse(model.retina(padded, loc, 28, 28).flatten(1), loc)
        h, state = model.core.step(g, state)
        if t < T - 1:
            mu = model.locator(h)
            want = gaussian_log_prob(ep.locations[:, t + 1], mu, 0.3)
            torch.testing.assert_close(ep.log_pi[:, t], want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ep.log_probs, model.classifier(h), rtol=1e-12, atol=1e-12)
