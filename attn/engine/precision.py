"""The arithmetic of a training step (``train.precision``): fp32, or mixed precision with autocast.

- fp32: everything in float32.
- bf16: the forward pass and the loss under ``torch.autocast`` in bfloat16 (matrix products, convolutions;
  reductions and the log-softmax stay float32 as autocast decides); weights, gradients and optimizer
  state stay float32. bfloat16 has float32's range, so no loss scaling is needed.
- fp16: the same in float16, with a ``torch.amp.GradScaler``: the loss is scaled before ``backward``,
  the gradients unscaled before clipping and the norm check, and a step whose scaled gradients
  overflowed is skipped while the scale halves (the scale is part of the checkpoint). Those skips
  count as non-finite steps: ``train.max_nonfinite_steps`` of them in a row mean the scale fell by
  2**limit, a diverged run.

Every part of it stays on the device: nothing here reads a value back to the host.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16, or AMX tiles), as torch sees it.
    (oneDNN's own bf16 check also accepts plain AVX-512, where bfloat16 is emulated and slow.)"""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


class Precision:
    """``train.precision`` on ``device`` (its type picks autocast's and the scaler's backend; fp32
    uses neither, so it needs no device)."""

    def __init__(self, name: str, device: torch.device = torch.device("cpu")):
        if name not in DTYPES:
            raise ValueError(f"unknown precision {name!r}")  # pragma: no cover - the schema admits only these
        self.name, self.dtype, self.device_type = name, DTYPES[name], device.type
        self.scaler: Optional[torch.amp.GradScaler] = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """The context of the forward pass and the loss."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def note(self, native_bf16: Optional[bool] = None) -> Optional[str]:
        """A line for the run's log when this choice is slower than fp32 on this machine: bf16 on a
        CPU without native bfloat16 arithmetic (AVX512-BF16 or AMX), where oneDNN converts every
        operand instead. None otherwise. native_bf16: the CPU's answer (default: this one's)."""
        if self.name != "bf16" or self.device_type != "cpu":
            return None
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        if native:
            return None
        return ("train.precision bf16: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX), so "
                "autocast is slower than fp32 here; train.precision=fp32 trains faster on it")

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping or measuring the gradients: undo the loss scale (fp16)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Take the step through the scaler (which skips it if the gradients overflowed, then adapts
        the scale). False when there is no scaler: the caller steps itself."""
        if self.scaler is None:
            return False
        self.scaler.step(optimizer)
        self.scaler.update()
        return True

    def state_dict(self) -> Optional[dict]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
