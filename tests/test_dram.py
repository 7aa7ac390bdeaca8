"""DRAM: the sequence loss by hand, the rollout re-run step by step, gradient routing, evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from attn.config import load_config
from attn.data.base import IGNORE_INDEX as I
from attn.data.base import BatchLoader, DataSpec, Split, TaskData
from attn.engine.loop import evaluate, score_batch
from attn.losses import sequence_hybrid_loss, sequence_outcome
from attn.models import build_model
from attn.models.cores import SequenceCore
from attn.models.dram import DRAM, SequenceEpisode
from attn.models.policy import gaussian_log_prob

SPEC = DataSpec(1, 30, 30, 11, ("<end>",) + tuple("123456789") + ("0",), max_tokens=4, end_token=0)


def dram(*overrides: str, spec: DataSpec = SPEC) -> DRAM:
    base = ["data.task=svhn", "data.max_digits=3", "model.name=dram", "model.retina.patch_size=9", "model.hidden_size=16"]
    base += ["model.conv_channels=[4,4,8]"]
    cfg = load_config(None, base + list(overrides))
    return build_model(cfg.model, spec)


def test_sequence_outcome_hand_worked():
    y = torch.tensor([[3, 4, 0, I], [3, 4, 0, I], [1, 0, I, I], [2, 2, 2, 0]])
    pred = torch.tensor([[3, 4, 0, 5], [3, 5, 0, 0], [2, 0, 0, 0], [2, 2, 2, 1]])
    out = sequence_outcome(pred, y, end_token=0)
    # Sample 0 is read completely (the slot after its end token is not active); sample 1 stops at
    # its second token, sample 2 at its first; sample 3 misses only its end token.
    assert out.active.int().tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert out.reward.tolist() == [3, 1, 0, 3]
    assert out.correct.tolist() == [True, False, False, False]
    assert out.token_correct.sum(1).tolist() == [3, 2, 1, 3]


def test_sequence_hybrid_loss_hand_worked():
    # B = 2, L = 2 slots, one glimpse per slot (G = 2), 3 classes, end token 0.
    p = torch.tensor(
        [
            [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]],  # predicts (1, 0)
            [[0.2, 0.3, 0.5], [0.5, 0.4, 0.1]],  # predicts (2, 0)
        ]
    )
    y = torch.tensor([[1, 0], [1, 0]])  # sample 0 right (R = 2); sample 1 wrong at slot 0 (R = 0)
    log_pi = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    base = torch.tensor([[0.5, 1.0], [0.25, 2.0]])
    ep = SequenceEpisode(p.log(), log_pi, base, torch.zeros(2, 2, 2), torch.tensor([0, 1]))
    t = sequence_hybrid_loss(ep, y, rl_coef=0.1, end_token=0)
    # NLL over the active slots: sample 0 both slots, sample 1 only slot 0 (its first mistake).
    nll = -(math.log(0.7) + math.log(0.6) + math.log(0.3)) / 3
    # Valid steps: sample 0 both (R = 2), sample 1 only step 0 (R = 0).
    mse = ((0.5 - 2) ** 2 + (1.0 - 2) ** 2 + (0.25 - 0) ** 2) / 3
    rl = ((1.0 * 1.5 + 2.0 * 1.0) + (3.0 * -0.25)) / 2
    assert t.nll.item() == pytest.approx(nll)
    assert t.baseline.item() == pytest.approx(mse)
    assert t.reinforce.item() == pytest.approx(rl)
    assert t.total.item() == pytest.approx(nll + mse + 0.1 * rl)
    assert t.reward.tolist() == [2.0, 0.0] and t.correct.tolist() == [True, False]
    assert t.glimpses.tolist() == [2.0, 1.0]


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
@pytest.mark.parametrize("explore", [0, 2])
def test_rollout_rerun_by_hand(core, explore):
    """Replay the recorded locations through the modules: the retina read exactly those locations,
    log pi scores exactly those samples, and the slots are classified from the right glimpses."""
    torch.manual_seed(0)
    n = 2
    model = dram(f"model.core.kind={core}", f"model.explore_steps={explore}", f"model.glimpses_per_digit={n}", "model.policy_std=0.2")
    model = model.double()
    x = torch.randn(3, 1, 30, 30, dtype=torch.float64)
    ep = model(x, num_slots=3)
    G = 3 * (explore + n)
    assert ep.log_probs.shape == (3, 3, 11) and ep.log_pi.shape == ep.baselines.shape == (3, G)
    assert ep.step_slot.tolist() == [s // (explore + n) for s in range(G)]

    padded = model.retina.pad(x)
    h2, s2 = model._open_upper(model.context(x))
    s1 = model.lower.init_state(3, x.device, x.dtype)
    slots = []
    for s in range(G):
        loc = ep.locations[:, s]
        torch.testing.assert_close(ep.log_pi[:, s], gaussian_log_prob(loc, model.locator(h2), 0.2))
        torch.testing.assert_close(ep.baselines[:, s], model.baseline(h2))
        h1, s1 = model.lower.step(model.glimpse(model.retina(padded, loc, 30, 30), loc), s1)
        if s % (explore + n) == explore + n - 1:
            slots.append(model.classifier(h1))
        h2, s2 = model.upper.step(h1, s2)
    torch.testing.assert_close(ep.log_probs, torch.stack(slots, 1))


def test_lstm_context_sets_the_top_state_and_transformer_reads_it():
    torch.manual_seed(0)
    lstm = dram("model.core.kind=lstm")
    ctx = torch.randn(2, 16)
    h2, (h, c) = lstm._open_upper(ctx)
    assert torch.equal(h2, ctx) and torch.equal(h, ctx) and not c.any()
    tr = dram("model.core.kind=gpt2")
    assert isinstance(tr.upper, SequenceCore)
    h2, state = tr._open_upper(ctx)
    assert state.t == 1 and h2.shape == (2, 16)


@pytest.mark.parametrize("core", ["gpt2", "trxl", "gtrxl"])
def test_transformer_dram_cache_matches_recompute(core):
    torch.manual_seed(0)
    cached = dram(f"model.core.kind={core}")
    plain = dram(f"model.core.kind={core}", "model.core.use_cache=false")
    plain.load_state_dict(cached.state_dict())
    x = torch.randn(4, 1, 30, 30)
    a = cached(x, policy="mean", num_slots=2)
    b = plain(x, policy="mean", num_slots=2)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.locations, b.locations, rtol=1e-5, atol=1e-5)


def _groups(model, loss) -> set[str]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _terms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 1, 30, 30, generator=g)
    # Labels the untrained model reads right at slot 0 for some samples, so later slots count too.
    with torch.no_grad():
        first = model(x, policy="mean", num_slots=1).log_probs[:, 0].argmax(-1)
    y = torch.stack([first, torch.randint(1, 11, (16,), generator=g), torch.zeros(16, dtype=torch.long)], 1)
    y[::2, 0] = torch.randint(1, 11, (8,), generator=g)
    return sequence_hybrid_loss(model(x, num_slots=3), y, rl_coef=1.0, end_token=0)


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_gradient_routing_top(core):
    torch.manual_seed(0)
    model = dram(f"model.core.kind={core}")
    t = _terms(model)
    # Classification: the glimpse net, the bottom core and the classifier only.
    assert _groups(model, t.nll) == {"glimpse", "lower", "classifier"}
    # REINFORCE (the paper's routing): the location net, the top core and the context net.
    assert _groups(model, t.reinforce) == {"locator", "upper", "context"}
    assert _groups(model, t.baseline) == {"baseline"}
    model.zero_grad(set_to_none=True)
    t.total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_gradient_routing_detached_and_full():
    torch.manual_seed(0)
    model = dram("model.policy_grad=detached")
    assert _groups(model, _terms(model).reinforce) == {"locator"}
    model = dram("model.policy_grad=full")
    assert _groups(model, _terms(model).reinforce) == {"locator", "upper", "context", "lower", "glimpse"}


def test_rgb_input_context_sees_colour_glimpses_see_gray():
    spec = DataSpec(3, 30, 30, 11, SPEC.class_names, max_tokens=4, end_token=0)
    torch.manual_seed(0)
    model = dram("data.color=rgb", spec=spec)
    x = torch.randn(2, 3, 30, 30)
    ep = model(x, policy="mean", num_slots=2)
    assert model.context.features[0].in_channels == 3 and model.glimpse.convs[0].in_channels == 1
    assert ep.log_probs.shape == (2, 2, 11)


def test_score_batch_and_mc_evaluation_with_explore():
    y = torch.tensor([[3, 0, I], [5, 6, 0]])
    lp = torch.full((2, 3, 11), -10.0)
    lp[0, 0, 3] = lp[0, 1, 0] = lp[0, 2, 0] = 0.0  # sample 0 read right
    lp[1, 0, 5] = lp[1, 1, 7] = lp[1, 2, 0] = 0.0  # sample 1 wrong at its second digit
    nll, tokens, correct, tok_ok, dig_ok, digits, reward, count = score_batch(lp, y, 0).tolist()
    assert (tokens, correct, tok_ok, dig_ok, digits, reward, count) == (5, 1, 4, 2, 3, 3, 2)
    assert nll == pytest.approx(10.0)

    # A whole evaluation pass with M > 1 copies and explore steps runs and scores every image once.
    torch.manual_seed(0)
    model = dram("model.explore_steps=1")
    n = 10
    labels = torch.full((n, 4), I)
    labels[:, 0] = torch.randint(1, 11, (n,))
    labels[:, 1] = 0
    labels[:3, 1], labels[:3, 2] = 4, 0
    split = Split(torch.randint(0, 256, (n, 1, 34, 34), dtype=torch.uint8), labels, torch.arange(n))
    data = TaskData(SPEC, split, split, split, 0.5, 0.25, crop=30)
    loader = BatchLoader(split, 4, shuffle=False)
    out = evaluate(model, loader, data, device=torch.device("cpu"), policy="sample", mc_samples=3, seed=1)
    assert out["count"] == n and 0.0 <= out["accuracy"] <= 1.0 and {"token_accuracy", "digit_accuracy", "reward"} <= set(out)
    again = evaluate(model, loader, data, device=torch.device("cpu"), policy="sample", mc_samples=3, seed=1)
    assert again == out  # seeded: evaluation is deterministic
