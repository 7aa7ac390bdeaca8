"""Comparing two ways of running one episode."""

from __future__ import annotations

def assert_same_episode(got, ref, tol: float, grad_tol: tuple[float, float]) -> None:
    """Two ways of running one episode agree: ``got`` and ``ref`` are each (episode output, loss,
    {parameter name: gradient or None}); outputs and loss within ``tol``, gradients within
    ``grad_tol`` (rtol, atol), and the same parameters without a gradient."""
    import torch

    (out, loss, grads), (ref_out, ref_loss, ref_grads) = got, ref
    for field in ("log_probs", "log_pi", "baselines", "locations"):
        torch.testing.assert_close(getattr(out, field), getattr(ref_out, field), rtol=tol, atol=tol, msg=field)
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    for name, want in ref_grads.items():
        have = grads[name]
        assert (have is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(have, want, rtol=grad_tol[0], atol=grad_tol[1], msg=name)
