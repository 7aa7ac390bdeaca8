"""The fused RNN episode equals the generic autograd loop: outputs and every gradient, in float64."""

from __future__ import annotations

import pytest
import torch

from attn.config import ModelConfig
from attn.data.base import DataSpec
from attn.losses import hybrid_loss
from attn.models.ram import RAM


@pytest.mark.parametrize(
    "T,policy_grad,scales,policy,C",
    [(6, "detached", 1, "sample", 1), (4, "full", 2, "sample", 3), (3, "detached", 3, "mean", 1), (1, "detached", 1, "sample", 1)],
)
def test_fused_matches_generic(T, policy_grad, scales, policy, C):
    spec = DataSpec(C, 20, 24, 10, tuple("0123456789"))
    torch.manual_seed(0)
    kw = dict(num_glimpses=T, policy_grad=policy_grad, retina={"patch_size": 5, "num_scales": scales}, hidden_size=32,
              what_size=16, where_size=8, policy_std=0.2)
    fused = RAM(ModelConfig(fused_episode=True, **kw), spec).double()
    generic = RAM(ModelConfig(fused_episode=False, **kw), spec).double()
    generic.load_state_dict(fused.state_dict())
    assert fused.fused and not generic.fused
    x = torch.randn(7, C, 20, 24, dtype=torch.float64)
    y = torch.randint(0, 10, (7,))
    outs, grads = [], []
    for model in (fused, generic):
        gen = torch.Generator().manual_seed(5)
        ep = model(x, policy=policy, generator=gen)
        terms = hybrid_loss(ep, y, rl_coef=0.7)
        model.zero_grad()
        terms.total.backward()
        outs.append(ep)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    a, b = outs
    for field in ("log_probs", "log_pi", "baselines", "locations"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-10, atol=1e-12, msg=field)
    for name, g in grads[1].items():
        if g is None:
            assert grads[0][name] is None or grads[0][name].abs().max() == 0, name
        else:
            torch.testing.assert_close(grads[0][name], g, rtol=1e-9, atol=1e-12, msg=name)
