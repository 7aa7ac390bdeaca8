"""A fused RAM episode for the ``rnn`` core: the same mathematics as :class:`~attn.models.ram.RAM`'s
generic loop, with a hand-written backward pass.

Why: on a CPU the generic loop spends about half of a training step in framework overhead (a few
hundred small operations and autograd nodes per episode) and computes every weight gradient as T
separate small matrix products. Here the forward loop runs without autograd, and the backward pass
walks the recurrence once, collecting the pre-activation gradients of every step, then forms each
weight gradient as one matrix product over all T*B rows (dW = sum_t dA_t^T X_t = dA^T X).

Per step t = 0..T-1 (B = batch, d = hidden size, P_t = retina patches at l_t, flattened):

    h_what_t  = ReLU(P_t W_what^T + b_what)                       (B, what_size)
    h_where_t = ReLU(l_t W_where^T + b_where)                      (B, where_size)
    z_t       = [h_what_t, h_where_t]
    g_t       = ReLU(z_t W_out^T + b_out)                         (B, d)     glimpse vector
    h_t       = ReLU(g_t W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh)   (B, d)     h_{-1} = 0
    l_{t+1}   = mu(h_t) + sigma * eps_t  (t < T-1), detached

The location net, baseline and classifier stay ordinary autograd modules applied to the stacked
states after the loop, so REINFORCE and the routing options behave exactly as in the generic path.
``tests/test_ram_fused.py`` checks outputs and every gradient against the generic loop in float64.
"""

from __future__ import annotations

from typing import Optional

import torch


class RNNGlimpseEpisode(torch.autograd.Function):
    """(weights, padded image, l_0, noise) -> states H (T, B, d) and locations L (T, B, 2).

    Only the glimpse network and the RNN cell receive gradients; the location net's weights are
    used (without gradient) to choose the locations, which are actions, not differentiable outputs.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        retina,
        padded: torch.Tensor,
        height: int,
        width: int,
        loc0: torch.Tensor,
        noise: Optional[torch.Tensor],
        num_steps: int,
        loc_fc_w: torch.Tensor,
        loc_fc_b: torch.Tensor,
        loc_mu_w: torch.Tensor,
        loc_mu_b: torch.Tensor,
        w_what: torch.Tensor,
        b_what: torch.Tensor,
        w_where: torch.Tensor,
        b_where: torch.Tensor,
        w_out: torch.Tensor,
        b_out: torch.Tensor,
        w_ih: torch.Tensor,
        b_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_hh: torch.Tensor,
    ):
        T = num_steps
        B = loc0.shape[0]
        d = w_ih.shape[0]
        n_what = w_what.shape[0]
        dtype, device = loc0.dtype, loc0.device
        feat = w_what.shape[1]
        P = torch.empty(T, B, feat, dtype=dtype, device=device)
        L = torch.empty(T, B, 2, dtype=dtype, device=device)
        Z = torch.empty(T, B, n_what + w_where.shape[0], dtype=dtype, device=device)
        G = torch.empty(T, B, d, dtype=dtype, device=device)
        H = torch.empty(T, B, d, dtype=dtype, device=device)
        w_cell = torch.cat([w_ih, w_hh], dim=1)  # [W_ih | W_hh]: one product per step
        b_cell = b_ih + b_hh
        loc = loc0
        for t in range(T):
            L[t] = loc
            P[t] = retina(padded, loc, height, width).reshape(B, feat)
            torch.addmm(b_what, P[t], w_what.t(), out=Z[t, :, :n_what])
            torch.addmm(b_where, loc, w_where.t(), out=Z[t, :, n_what:])
            Z[t].relu_()
            torch.addmm(b_out, Z[t], w_out.t(), out=G[t]).relu_()
            if t == 0:
                torch.addmm(b_cell, G[0], w_ih.t(), out=H[0]).relu_()
            else:
                torch.addmm(b_cell, torch.cat([G[t], H[t - 1]], dim=1), w_cell.t(), out=H[t]).relu_()
            if t < T - 1:
                mu = torch.tanh(torch.addmm(loc_mu_b, torch.relu(torch.addmm(loc_fc_b, H[t], loc_fc_w.t())), loc_mu_w.t()))
                loc = mu + noise[t] if noise is not None else mu
        ctx.save_for_backward(P, L, Z, G, H, w_what, w_where, w_out, w_ih, w_hh)
        ctx.n_what = n_what
        ctx.mark_non_differentiable(L)
        return H, L

    @staticmethod
    def backward(ctx, dH: torch.Tensor, _dL: torch.Tensor):  # type: ignore[override]
        P, L, Z, G, H, w_what, w_where, w_out, w_ih, w_hh = ctx.saved_tensors
        T, B, d = H.shape
        n_what = ctx.n_what
        w_cell = torch.cat([w_ih, w_hh], dim=1)  # (d, 2d)
        relu_grad = torch.ops.aten.threshold_backward  # grad * (output > 0) in one kernel
        # In the default routing only h_T receives gradient from outside (the heads read detached
        # states); skip adding the all-zero dH[t] then.
        outer = T > 1 and bool(dH[:-1].any())
        dA: list = [None] * T  # dLoss/d(pre-activation of h_t)
        dAG: list = [None] * T  # dLoss/d(pre-activation of g_t)
        dAZ: list = [None] * T  # dLoss/d(pre-activations of h_what_t, h_where_t)
        dh = dH[T - 1]
        for t in range(T - 1, -1, -1):
            dA[t] = relu_grad(dh, H[t], 0)
            if t > 0:
                dgh = dA[t].mm(w_cell)  # (B, 2d): [dL/dg_t, dL/dh_{t-1} through W_hh]
                dg = dgh[:, :d]
                dh = dgh[:, d:] + dH[t - 1] if outer else dgh[:, d:]
            else:
                dg = dA[0].mm(w_ih)
            dAG[t] = relu_grad(dg, G[t], 0)
            dAZ[t] = relu_grad(dAG[t].mm(w_out), Z[t], 0)
        dA, dAG, dAZ = torch.stack(dA), torch.stack(dAG), torch.stack(dAZ)
        # Weight gradients: one product over all T*B rows each.
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        dA2, dAG2, dAZ2 = flat(dA), flat(dAG), flat(dAZ)
        d_what, d_where = dAZ2[:, :n_what], dAZ2[:, n_what:]
        g_w_what = d_what.t().mm(flat(P))
        g_w_where = d_where.t().mm(flat(L))
        g_w_out = dAG2.t().mm(flat(Z))
        g_w_ih = dA2.t().mm(flat(G))
        g_w_hh = flat(dA[1:]).t().mm(flat(H[:-1])) if T > 1 else torch.zeros_like(w_hh)
        g_b_cell = dA2.sum(0)
        return (
            None, None, None, None, None, None, None,  # retina, padded, H, W, l_0, noise, T
            None, None, None, None,  # location net (chooses actions; trained outside by REINFORCE)
            g_w_what, d_what.sum(0), g_w_where, d_where.sum(0), g_w_out, dAG2.sum(0),
            g_w_ih, g_b_cell, g_w_hh, g_b_cell.clone(),  # two parameters must not share one grad tensor
        )


def run_fused_episode(model, images: torch.Tensor, loc0: torch.Tensor, noise: Optional[torch.Tensor]):
    """H (T, B, d) and L (T, B, 2) for a RAM ``model`` with an RNN core (see module docstring)."""
    B, _, height, width = images.shape
    glimpse, cell, loc = model.glimpse, model.core.cell, model.locator
    return RNNGlimpseEpisode.apply(
        model.retina, model.retina.pad(images), height, width, loc0, noise, model.num_glimpses,
        loc.fc.weight.detach(), loc.fc.bias.detach(), loc.mu.weight.detach(), loc.mu.bias.detach(),
        glimpse.what.weight, glimpse.what.bias, glimpse.where.weight, glimpse.where.bias,
        glimpse.out.weight, glimpse.out.bias,
        cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh,
    )


__all__ = ["RNNGlimpseEpisode", "run_fused_episode"]
