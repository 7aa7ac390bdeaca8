"""The cores f_h: rnn, lstm (:mod:`attn.models.cores.rnn`), gpt2 (:mod:`.gpt2`), trxl (:mod:`.trxl`),
gtrxl (:mod:`.gtrxl`); :func:`attn.models.build.build_core` makes one from ``model.core``.
"""

from __future__ import annotations

from attn.models.cores.base import Core, SequenceCore, TransformerState


__all__ = ["Core", "SequenceCore", "TransformerState"]
