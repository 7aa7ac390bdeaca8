"""RAM's episode paths: the two-phase rollout of the Transformer cores against stepping with the
key/value cache inside the graph (float64: outputs, loss and every gradient), which models take it,
and the clamped location: the retina and the where branch read the same clamp(l, -1, 1), checked
against a slow reference episode written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn.config import load_config, model_config
from attn.data.base import DataSpec
from attn.losses import hybrid_loss
from attn.models import build_model
from attn.models.ram import RAM
from helpers.episodes import assert_same_episode

SPEC = DataSpec(1, 20, 26, 10, tuple(str(i) for i in range(10)))  # non-square: x and y cannot swap
F64 = torch.float64

TRANSFORMERS = [
    pytest.param({"kind": "gpt2", "num_layers": 2, "num_heads": 2}, id="gpt2"),
    pytest.param({"kind": "trxl", "num_layers": 2, "num_heads": 2, "norm": "post"}, id="trxl-post"),
    pytest.param({"kind": "trxl", "num_layers": 1, "num_heads": 2, "norm": "pre", "memory_length": 2}, id="trxl-pre-mem2"),
    pytest.param({"kind": "gtrxl", "num_layers": 2, "num_heads": 2, "inner_size": 24}, id="gtrxl"),
]


def _model(core: dict, **options) -> RAM:
    torch.manual_seed(0)
    cfg = model_config(
        core=core, num_glimpses=options.pop("num_glimpses", 5), hidden_size=16, what_size=8, where_size=6,
        retina={"patch_size": 4, "num_scales": 2}, **options,
    )
    model = build_model(cfg, SPEC).to(F64)
    with torch.no_grad():  # u, v and b_g off their initial values, so every term of the cores counts
        for name, p in model.named_parameters():
            if name.endswith((".u", ".v", "b_g")):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _episode(model: RAM, two_phase: bool, x, y, **kwargs):
    model.two_phase = two_phase
    model.zero_grad(set_to_none=True)
    ep = model(x, generator=torch.Generator().manual_seed(3), **kwargs)
    loss = hybrid_loss(ep, y, rl_coef=0.7)
    loss.total.backward()
    return ep, loss.total.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("core", TRANSFORMERS)
@pytest.mark.parametrize("routing", ["detached", "full"])
def test_two_phase_rollout_equals_stepping_with_the_cache(core, routing):
    model = _model({**core, "rollout": "two_phase"}, policy_grad=routing, policy_std=0.9)
    assert model.two_phase
    x = torch.randn(6, 1, SPEC.height, SPEC.width, dtype=F64)
    y = torch.randint(0, 10, (6,))
    reference = _episode(model, False, x, y)
    assert_same_episode(_episode(model, True, x, y), reference, 1e-10, (1e-8, 1e-10))
    ref = reference[0]
    # the locations reach out of [-1, 1] here, so the clamp is exercised on both paths
    assert (ref.locations.abs() > 1).any()


def test_which_models_roll_out_in_two_phases():
    assert _model({"kind": "gtrxl", "rollout": "two_phase"}).two_phase
    assert not _model({"kind": "gtrxl"}).two_phase  # stepwise by default
    assert not _model({"kind": "rnn"}).two_phase
    assert not _model({"kind": "lstm"}).two_phase
    with pytest.raises(ValueError, match="use_cache"):
        model_config(core={"kind": "gpt2", "rollout": "two_phase", "use_cache": False})
    with pytest.raises(ValueError, match="applies to ram only"):
        model_config(name="dram", retina={"patch_size": 12}, core={"kind": "gpt2", "rollout": "two_phase"})
    with pytest.raises(ValueError, match="rollout"):
        model_config(core={"kind": "lstm", "rollout": "two_phase"})


def test_active_dropout_steps_inside_the_graph_and_evaluation_needs_no_second_pass():
    """With dropout in training the two passes would draw different masks: the model steps inside
    the graph then. In eval mode the second phase runs; without gradients only the first."""
    model = _model({"kind": "gpt2", "dropout": 0.1, "rollout": "two_phase"}, num_glimpses=4)
    passes = []
    whole = model.core.forward_sequence
    model.core.forward_sequence = lambda *a, **k: passes.append(1) or whole(*a, **k)
    x = torch.randn(3, 1, SPEC.height, SPEC.width, dtype=F64)
    model.train()
    model(x)
    assert passes == []
    model.eval()
    model(x)
    assert passes == [1]
    with torch.no_grad():
        model(x)
    assert passes == [1]


def _slow_episode(model: RAM, x: torch.Tensor, locations: torch.Tensor, clamp_where: bool) -> torch.Tensor:
    """Class log-probabilities of an rnn-core RAM episode at the given locations (B, T, 2), sample by
    sample with explicit slices of the padded image: the reference for the clamp."""
    r, g, cell = model.retina, model.glimpse, model.core.cell
    B, _, H, W = x.shape
    out = []
    for b in range(B):
        h = torch.zeros(cell.hidden_size, dtype=x.dtype)
        for t in range(locations.shape[1]):
            raw = locations[b, t]
            c = raw.clamp(-1, 1)
            cx, cy = int(((c[0] + 1) / 2 * W).floor()), int(((c[1] + 1) / 2 * H).floor())
            pieces = []
            for size in r.sizes:
                canvas = torch.full((H + 2 * r.S, W + 2 * r.S), r.pad_value, dtype=x.dtype)
                canvas[r.S : r.S + H, r.S : r.S + W] = x[b, 0]
                y0, x0 = cy - size // 2 + r.S, cx - size // 2 + r.S
                big = canvas[y0 : y0 + size, x0 : x0 + size]
                pieces.append(F.adaptive_avg_pool2d(big[None, None], r.g).flatten())
            what = F.relu(g.what(torch.cat(pieces)))
            where = F.relu(g.where(c if clamp_where else raw))
            gt = F.relu(g.out(torch.cat([what, where])))
            h = F.relu(cell.weight_ih @ gt + cell.bias_ih + cell.weight_hh @ h + cell.bias_hh)
        out.append(F.log_softmax(model.classifier.fc(h), dim=-1))
    return torch.stack(out)


@pytest.mark.parametrize("hand_written", [True, False])
def test_the_where_branch_reads_the_clamped_location_the_retina_reads(hand_written):
    model = _model({"kind": "rnn"}, num_glimpses=4, policy_std=1.0)  # many samples leave [-1, 1]
    model.hand_written = hand_written
    x = torch.randn(5, 1, SPEC.height, SPEC.width, dtype=F64)
    with torch.no_grad():
        ep = model(x, generator=torch.Generator().manual_seed(1))
        assert (ep.locations.abs() > 1).sum() >= 5
        want = _slow_episode(model, x, ep.locations, clamp_where=True)
        raw = _slow_episode(model, x, ep.locations, clamp_where=False)
    torch.testing.assert_close(ep.log_probs, want, rtol=1e-10, atol=1e-10)
    assert (ep.log_probs - raw).abs().max() > 1e-6  # the raw sample in the where branch would differ


def test_dram_glimpses_read_the_clamped_location():
    torch.manual_seed(0)
    spec = DataSpec(1, 30, 30, 11, ("<end>",) + tuple("123456789") + ("0",), max_tokens=3, end_token=0)
    cfg = load_config(None, [
        "data.task=svhn", "data.max_digits=2", "model.name=dram", "model.retina.patch_size=9",
        "model.hidden_size=16", "model.conv_channels=[4,4,8]", "model.policy_std=1.0",
    ])
    model = build_model(cfg.model, spec).to(F64)
    seen = []
    model.glimpse.register_forward_hook(lambda _m, args, _out: seen.append(args[1].clone()))
    with torch.no_grad():
        ep = model(torch.randn(4, 1, 30, 30, dtype=F64), generator=torch.Generator().manual_seed(2))
    got = torch.stack(seen, dim=1)
    assert (ep.locations.abs() > 1).any()
    torch.testing.assert_close(got, ep.locations.clamp(-1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("core", [{"kind": "rnn"}, {"kind": "gtrxl", "num_heads": 2}])
def test_mean_readout_classifies_the_mean_of_every_steps_state(core):
    """readout mean: log p(y | x) = log_softmax(W mean_t h_t + b), h_t recomputed here from the
    recorded locations with the core's own one-pass sequence (the rnn core: its step loop)."""
    model = _model(core, readout="mean", num_glimpses=4)
    assert not model.hand_written  # the hand-written episode gives no gradient to h_1..h_{T-1}
    x = torch.randn(5, 1, SPEC.height, SPEC.width, dtype=F64)
    ep = model(x, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        seen = ep.locations.clamp(-1, 1)  # (B, T, 2)
        padded = model.retina.pad(x)
        g = torch.stack(
            [model.glimpse(model.retina(padded, seen[:, t], SPEC.height, SPEC.width).flatten(1), seen[:, t])
             for t in range(4)], dim=1,
        )
        h = model.core.forward_sequence(g)  # (B, T, d)
        want = F.log_softmax(model.classifier.fc(h.mean(1)), dim=-1)
    torch.testing.assert_close(ep.log_probs.detach(), want, rtol=1e-10, atol=1e-10)
    F.nll_loss(ep.log_probs, torch.arange(5)).backward()
    assert model.core.parameters().__next__().grad is not None
