"""Optimizer parameter groups: weight decay shrinks weight matrices and kernels only, never biases,
normalisation parameters, Transformer-XL's u/v biases or GTrXL's gate bias b_g."""

from __future__ import annotations

import pytest
import torch

from attn.config import TrainConfig, load_config
from attn.data.base import DataSpec
from attn.engine.optim import build_optimizer
from attn.models import build_model

MNIST = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))
SVHN = DataSpec(1, 54, 54, 11, ("<end>",) + tuple("123456789") + ("0",), max_tokens=4, end_token=0)

MODELS = {
    "ram-rnn": (MNIST, []),
    "ram-gpt2": (MNIST, ["model.core.kind=gpt2", "model.core.num_layers=2"]),
    "ram-trxl": (MNIST, ["model.core.kind=trxl", "model.core.num_heads=2"]),
    "ram-gtrxl": (MNIST, ["model.core.kind=gtrxl", "model.core.inner_size=64"]),
    "dram-lstm": (SVHN, ["data.task=svhn", "model.name=dram", "model.retina.patch_size=12", "model.hidden_size=32"]),
}


def _model(name: str):
    spec, overrides = MODELS[name]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    return build_model(cfg.model, spec)


def _one_step_with_zero_gradients(model, optimizer: str):
    """One optimizer step where every gradient is 0: what moves is weight decay alone."""
    cfg = TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5, momentum=0.0)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return before


# Names that must keep their values under decay, whatever the model: hand-listed, not derived.
KEPT = ("bias", "bias_ih", "bias_hh", "b_g", ".u", ".v", "ln_1.weight", "ln_2.weight", "ln_f.weight", "ln1.weight", "ln2.weight")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_shrinks_only_weight_matrices_and_kernels(name, optimizer):
    model = _model(name)
    before = _one_step_with_zero_gradients(model, optimizer)
    decayed = kept = 0
    for n, p in model.named_parameters():
        if n.endswith(KEPT):
            assert torch.equal(p.detach(), before[n]), f"{n} was decayed"
            kept += 1
        else:
            # AdamW: p <- p (1 - lr wd); SGD (coupled L2, no momentum): p <- p - lr wd p: the same factor
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5), msg=n)
            assert p.ndim >= 2, n
            decayed += 1
    assert decayed > 0 and kept > 0


def test_the_gate_bias_and_u_v_survive_decay_by_name():
    model = _model("ram-gtrxl")
    before = _one_step_with_zero_gradients(model, "adamw")
    params = dict(model.named_parameters())
    for n in ("core.layers.0.gate1.b_g", "core.layers.0.gate2.b_g", "core.layers.0.attn.u", "core.layers.0.attn.v"):
        assert torch.equal(params[n].detach(), before[n]), n
    assert float(params["core.layers.0.gate1.b_g"].detach().mean()) == 2.0
    # u and v are (H, dh) matrices: a rule "decay every 2-D parameter" would get them wrong
    assert params["core.layers.0.attn.u"].ndim == 2
    assert not torch.equal(params["core.layers.0.attn.qkv.weight"].detach(), before["core.layers.0.attn.qkv.weight"])


def test_every_trainable_parameter_is_in_exactly_one_group():
    model = _model("dram-lstm")
    opt = build_optimizer(model, TrainConfig())
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_a_cosine_schedule_resumed_with_more_epochs_spans_the_new_length():
    """--resume with train.epochs 10 -> 20 after 4 epochs: the learning rate continues on the cosine of
    20 epochs (a float64 closed form), reaching 0 at epoch 20 instead of rising again after 10."""
    import math

    from attn.engine.optim import fit_schedule_to

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        opt.step()
        sched.step()
    fit_schedule_to(sched, 20)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.05 * (1 + math.cos(math.pi * t / 20)) for t in range(4, 20)]
    assert lrs == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    fit_schedule_to(plateau, 20)  # nothing to fit


def _trained_by(model, spec, term: str) -> set[str]:
    """Names of the parameters one loss term of a real episode gives a non-zero gradient."""
    from attn.engine.objective import objective_for

    torch.manual_seed(1)
    images = torch.randn(16, 1, spec.height, spec.width)
    objective = objective_for(spec, "all")
    if spec.max_tokens > 1:
        labels = torch.randint(1, spec.num_classes, (16, spec.max_tokens))
        labels[:, -1] = spec.end_token
    else:
        labels = torch.randint(0, spec.num_classes, (16,))
    model.zero_grad()
    # reward 1 for every episode whatever it read: REINFORCE then has a gradient even where nothing is right
    episode = model(images, **objective.slots(labels))
    terms = objective.loss(episode, labels, 1.0)
    loss = terms.nll + terms.baseline if term == "rest" else -(episode.log_pi * 1.0).sum()
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


@pytest.mark.parametrize("name", ["ram-rnn", "dram-lstm"])
def test_policy_lr_scale_slows_exactly_the_parameters_only_reinforce_trains(name):
    """Which parameters only the policy's score reaches is found from real gradients (the score log pi
    alone, then the classification and baseline losses); one SGD step with unit gradients then moves
    exactly those by lr * policy_lr_scale and every other parameter by lr."""
    model = _model(name)
    spec = MODELS[name][0]
    policy_only = _trained_by(model, spec, "policy") - _trained_by(model, spec, "rest")
    assert any(n.startswith("locator.") for n in policy_only)
    if name == "dram-lstm":
        assert any(n.startswith("context.") for n in policy_only) and any(n.startswith("upper.") for n in policy_only)
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.0, momentum=0.0,
                                             policy_lr_scale=0.25))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for n, p in model.named_parameters():
        step = (before[n] - p.detach()).abs().max().item()
        want = 0.025 if n in policy_only else 0.1
        assert step == pytest.approx(want, rel=1e-5), (n, step, want)
    default = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1))
    assert len(default.param_groups) == 2 and {g["lr"] for g in default.param_groups} == {0.1}
