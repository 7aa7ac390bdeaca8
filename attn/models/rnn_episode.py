"""RAM's episode with the ``rnn`` core, written out by hand: the same mathematics as the generic loop
of :class:`~attn.models.ram.RAM`, with a forward pass that records no autograd graph and a
hand-written backward pass.

Why: on a CPU the generic loop spends about half of a training step outside the matrix products
(several hundred small operations and autograd nodes per episode). Here the forward pass writes every
step into preallocated (T, B, .) buffers, and the backward pass walks only the recurrence itself
step by step (dA_{t-1} = ReLU'(h_{t-1}) * (dA_t W_hh)); everything that hangs off it (the glimpse
network, W_ih, every weight gradient) is then one matrix product over all T*B rows.

Per step t = 0..T-1 (B = batch, d = hidden size, c_t = clamp(l_t, -1, 1) the location the glimpse is
taken at, P_t = rho(x, c_t) flattened, (B, k*C*g*g)):

    h_what_t  = ReLU(P_t W_what^T + b_what)                        (B, what_size)
    h_where_t = ReLU(c_t W_where^T + b_where)                       (B, where_size)
    g_t       = ReLU([h_what_t, h_where_t] W_out^T + b_out)         (B, d)    glimpse vector
    h_t       = ReLU(g_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)     (B, d)    h_{-1} = 0 (no product)
    for t < T-1:
        a_t     = ReLU(h_t W_fc^T + b_fc)                           (B, d/2)  location net
        mu_t    = tanh(a_t W_mu^T + b_mu)                           (B, 2)
        l_{t+1} = mu_t + eps_t (sampled policy) or mu_t (mean policy), no gradient

It serves the default RAM routing ("detached"): the location net reads h_t without a gradient into
the core, so REINFORCE (through mu) trains only the location net, and the classification loss
(through h_{T-1}) trains the glimpse network and the core. Other routings and cores take the generic
loop. ``tests/test_rnn_episode.py`` checks every output and gradient against the generic loop in
float64.
"""

from __future__ import annotations

from typing import Optional

import torch

_relu_grad = torch.ops.aten.threshold_backward  # grad * (output > 0) in one kernel


class RNNEpisode(torch.autograd.Function):
    """(retina, padded images, l_0, noise, weights) -> h_{T-1} (B, d), H (T-1, B, d), mu (T-1, B, 2),
    L (T, B, 2).

    Differentiable outputs: h_{T-1} (into the glimpse network and the core) and mu (into the location
    net). H = h_0..h_{T-2} (read by the baseline, detached) and the locations L are not.
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
        w_fc: torch.Tensor,
        b_fc: torch.Tensor,
        w_mu: torch.Tensor,
        b_mu: torch.Tensor,
        num_steps: int,
    ):
        T, B = num_steps, loc0.shape[0]
        n_what = w_what.shape[0]
        new = loc0.new_empty
        L = new(T, B, 2)
        LC = new(T, B, 2)  # clamp(l_t, -1, 1): where the glimpse is taken, and what the where branch reads
        P = new(T, B, w_what.shape[1])  # the glimpses rho(x, l_t), written by the retina
        # h_what and h_where side by side, so that W_out takes them in one product (and dW_out is one)
        Z = new(T, B, n_what + w_where.shape[0])
        ZW, ZL = Z[..., :n_what], Z[..., n_what:]
        G = new(T, B, w_ih.shape[1])
        H = new(T - 1, B, w_ih.shape[0])
        A, MU = new(T - 1, B, w_fc.shape[0]), new(T - 1, B, 2)
        b_cell = b_ih + b_hh
        wt_what, wt_where, wt_ih, wt_hh, wt_fc, wt_mu = (w.t() for w in (w_what, w_where, w_ih, w_hh, w_fc, w_mu))
        wt_out = w_out.t()
        # per-step views made once (indexing a buffer at every step costs an operation each time)
        Ls, LCs, Ps, Zs, ZWs, ZLs, Gs, Hs, As, MUs = (x.unbind(0) for x in (L, LC, P, Z, ZW, ZL, G, H, A, MU))
        noises = noise.unbind(0) if noise is not None else None
        L[0] = loc0
        for t in range(T):
            loc, p = torch.clamp(Ls[t], -1.0, 1.0, out=LCs[t]), Ps[t]
            retina(padded, loc, height, width, out=p)
            torch.addmm(b_what, p, wt_what, out=ZWs[t])
            torch.addmm(b_where, loc, wt_where, out=ZLs[t])
            g = torch.addmm(b_out, Zs[t].relu_(), wt_out, out=Gs[t]).relu_()
            h = torch.addmm(b_cell, g, wt_ih, out=Hs[t] if t < T - 1 else None)
            if t > 0:
                h.addmm_(Hs[t - 1], wt_hh)
            h.relu_()
            if t < T - 1:
                a = torch.addmm(b_fc, h, wt_fc, out=As[t]).relu_()
                mu = torch.addmm(b_mu, a, wt_mu, out=MUs[t]).tanh_()
                if noises is None:
                    Ls[t + 1].copy_(mu)
                else:
                    torch.add(mu, noises[t], out=Ls[t + 1])
        ctx.n_what = n_what
        ctx.save_for_backward(P, LC, Z, G, H, h, A, MU, w_out, w_ih, w_hh, w_mu)
        ctx.mark_non_differentiable(H, L)
        return h, H, MU, L

    @staticmethod
    def backward(ctx, d_last: torch.Tensor, _dH, dMU: torch.Tensor, _dL):  # type: ignore[override]
        P, LC, Z, G, H, h_last, A, MU, w_out, w_ih, w_hh, w_mu = ctx.saved_tensors
        T, B = LC.shape[:2]
        n_what = ctx.n_what
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731  (T, B, n) -> (T*B, n)

        # The recurrence: dA_t = dLoss/d(pre-activation of h_t). Only h_{T-1} has an outside gradient.
        DA = torch.empty(T, B, h_last.shape[-1], dtype=h_last.dtype, device=h_last.device)
        _relu_grad(d_last, h_last, 0, grad_input=DA[T - 1])
        # (the ReLU masks are applied in place: the product's output is still in cache)
        for t in range(T - 1, 0, -1):
            _relu_grad(torch.mm(DA[t], w_hh, out=DA[t - 1]), H[t - 1], 0, grad_input=DA[t - 1])
        DA2 = flat(DA)
        # Off the recurrence, over all T*B rows at once: the glimpse network's pre-activations.
        DG = DA2.mm(w_ih)
        _relu_grad(DG, flat(G), 0, grad_input=DG)
        Z2 = flat(Z)
        DZ = DG.mm(w_out)
        _relu_grad(DZ, Z2, 0, grad_input=DZ)
        DW, DL = DZ[:, :n_what], DZ[:, n_what:]
        db_z = DZ.sum(0)
        b_cell = DA2.sum(0)
        H2 = flat(H)
        grads = [
            DW.t().mm(flat(P)), db_z[:n_what],
            DL.t().mm(flat(LC)), db_z[n_what:],
            DG.t().mm(Z2), DG.sum(0),
            DA2.t().mm(flat(G)), b_cell,
            flat(DA[1:]).t().mm(H2), b_cell.clone(),  # two parameters must not share one tensor
        ]
        if T > 1:  # the location net: mu = tanh(a W_mu^T + b_mu), a = ReLU(h W_fc^T + b_fc), h detached
            D_mu = flat(dMU) * (1.0 - flat(MU).square())
            A2 = flat(A)
            D_a = D_mu.mm(w_mu)
            _relu_grad(D_a, A2, 0, grad_input=D_a)
            grads += [D_a.t().mm(H2), D_a.sum(0), D_mu.t().mm(A2), D_mu.sum(0)]
        else:  # no location was ever emitted: like the generic loop, the location net gets no gradient
            grads += [None] * 4
        need = ctx.needs_input_grad[6:20]
        return (None,) * 6 + tuple(g if n else None for g, n in zip(grads, need)) + (None,)


def rnn_episode(model, images: torch.Tensor, loc0: torch.Tensor, noise: Optional[torch.Tensor]):
    """Run :class:`RNNEpisode` with a RAM ``model``'s modules (rnn core, detached routing).

    Returns h_{T-1} (B, d), H (T-1, B, d), mu (T-1, B, 2) and the locations L (T, B, 2).
    """
    _, _, height, width = images.shape
    g, cell, loc = model.glimpse, model.core.cell, model.locator
    return RNNEpisode.apply(
        model.retina, model.retina.pad(images), height, width, loc0, noise,
        g.what.weight, g.what.bias, g.where.weight, g.where.bias, g.out.weight, g.out.bias,
        cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh,
        loc.fc.weight, loc.fc.bias, loc.mu.weight, loc.mu.bias,
        model.num_glimpses,
    )


__all__ = ["RNNEpisode", "rnn_episode"]
