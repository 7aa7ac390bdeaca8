"""Attention models. Model code knows nothing of Ray or MLflow; the model classes take plain
arguments, and :func:`attn.models.build.build_model` is the one adapter from the config schema."""

from attn.models.build import build_model

__all__ = ["build_model"]
