"""What a model costs: parameters and floating-point operations per image for one full episode, to
compare with the cost table of the DRAM paper (Ba et al. 2015, Table 3).

FLOPs are counted by PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` over one forward episode of
the mean policy on one image (a multiply-add counts 2); a sequence model reads every label slot
(``spec.max_tokens``), i.e. the longest episode. Element-wise operations are not counted (as usual).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attn.data.base import DataSpec
from attn.engine.objective import objective_for


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _addmm_flops(_self_shape, a_shape, b_shape, *_args, **_kwargs) -> int:
    """(n, k) x (k, m): 2 n k m."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


@torch.no_grad()
def flops_per_image(model: nn.Module, spec: DataSpec) -> int:
    """Forward FLOPs of one episode on one image (on a CPU copy, so training state is untouched)."""
    m = copy.deepcopy(model).cpu().eval()
    # the counter's module tracker hooks the inputs that require grad; a view made under no_grad from
    # a parameter (e.g. DRAM's ViT query expanded to the batch) has none to hook, so none may require it
    m.requires_grad_(False)
    x = torch.zeros(1, spec.channels, spec.height, spec.width)
    kwargs = objective_for(spec).all_slots()
    # the hand-written rnn episode accumulates products in place (addmm_), which the counter's own
    # table (out-of-place ops only) would miss
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops})
    with counter:
        m(x, policy="mean", generator=torch.Generator().manual_seed(0), **kwargs)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, spec: DataSpec) -> dict[str, float]:
    total, trainable = parameter_counts(model)
    return {"model_params": total, "model_params_trainable": trainable, "model_flops_per_image": flops_per_image(model, spec)}
