"""``train.compile``: the training episode through ``torch.compile``.

off: eager. default: TorchDynamo captures the step's forward (the whole episode of T glimpses, every
core) as one graph, AOTAutograd its backward, TorchInductor fuses both into few kernels.
reduce-overhead: the same graphs replayed as CUDA graphs, so that a GPU no longer waits on Python
between the few hundred small kernels of a step. CUDA graphs need a GPU: on a CPU the mode compiles
as default (and the run says so in one line).

What is compiled is the training forward, called through DDP when several workers train (DDP's
graph splitting at its gradient buckets applies). Evaluation stays eager: it draws its episodes
from a seeded ``torch.Generator``, which Dynamo does not capture, and it runs once per epoch.

Shapes are static (``dynamic=False``): the training loader fills its last batch up
(``BatchLoader(fill_last=True)``) and sequence tasks read every label slot (``Objective.all_slots``),
so that a run compiles one graph, and a CUDA graph replays one fixed-length episode.

The rnn core's hand-written episode (:mod:`attn.models.rnn_episode`) is bypassed while compiling
(``RAM._hand_written_now``): it writes into preallocated buffers through ``out=`` inside a custom
autograd function, and what it saves by hand (small operations and autograd nodes per step) is what
the compiler's fusion saves for the generic loop, whose outputs and gradients are the same
(tests/unit/models/test_rnn_episode.py). ``tests/unit/engine/test_compile.py`` captures the step of
every core with ``fullgraph=True`` (no graph breaks).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

MODES = ("off", "default", "reduce-overhead")


def compile_training(model: nn.Module, mode: str, device: torch.device, log: Callable[[str], None],
                     backend: Optional[str] = None, fullgraph: bool = False) -> nn.Module:
    """``model`` (the module the training step calls, DDP-wrapped or not) for ``train.compile`` = ``mode``:
    itself for off, else a compiled module sharing its parameters. ``backend`` None: inductor (tests
    capture with "eager" or "aot_eager", which generate no code); ``fullgraph``: a graph break is an
    error (tests; a run falls back to running the rest eagerly)."""
    if mode not in MODES:
        raise ValueError(f"train.compile = {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return model
    if mode == "reduce-overhead" and device.type != "cuda":
        log("train.compile=reduce-overhead: CUDA graphs need a GPU; on the CPU the step compiles as default")
        mode = "default"
    if backend is not None:  # the mode only selects inductor's options
        return torch.compile(model, backend=backend, dynamic=False, fullgraph=fullgraph)
    return torch.compile(model, mode=mode, dynamic=False, fullgraph=fullgraph)


__all__ = ["MODES", "compile_training"]
