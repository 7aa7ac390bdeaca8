"""Recurrent Attention Model (Mnih et al. 2014, "Recurrent Models of Visual Attention").

Episode of T glimpses (``num_glimpses``) on images x (B, C, H, W):

    h_0 = core.init_state(), l_0 ~ U(-1, 1)^2 (or the centre)
    for t = 1..T:
        c_{t-1} = clamp(l_{t-1}, -1, 1)              where the glimpse is taken (the sensor's limits)
        g_t = f_g(rho(x, c_{t-1}), c_{t-1})         glimpse network on the retina's patches
        h_t = f_h(g_t, h_{t-1})                      core
        l_t ~ N(mu(h_t), sigma^2 I), detached        location policy (not for t = T: never used)
        b_t = Linear(h_t.detach())                   baseline
    log p(y | x) = log_softmax(Linear(h_T))          (readout "last"; "mean": of (h_1 + .. + h_T) / T)

``forward`` runs the whole episode in one call (one forward per backward keeps DDP's reducer sound)
and returns an :class:`Episode`; with the rnn core and the default routing the episode is the
hand-written one of :mod:`attn.models.rnn_episode` (same outputs and gradients, a faster step).

Transformer cores can train in two phases (``model.core.rollout = two_phase``): the locations are
detached samples, so the episode is first rolled out without gradients, stepping with the key/value
cache to choose l_1..l_{T-1}; then the glimpse network, the core (one causal pass over g_1..g_T) and
the heads run once over all T steps with gradients. The outputs and gradients are those of stepping
with the cache inside the graph (a float64 test), with far fewer operations per episode but one more
forward pass. With active dropout in the core (training, p > 0) the two passes would draw different
masks, so the policy scored would not be the one that acted: such models step inside the graph.

REINFORCE pairs log pi(l_t) with b_t for t = 1..T-1: the actions that were actually used as glimpse
locations. log pi scores the raw sample l_t; the clamp belongs to the environment (the retina and the
where branch both read c_t, as in the reference implementations), so the estimator stays unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from attn.models.cores import Core, SequenceCore
from attn.models.cores.rnn import RNNCore
from attn.models.glimpse import GlimpseNetwork
from attn.models.policy import BaselineNetwork, Classifier, LocationNetwork, gaussian_log_prob
from attn.models.retina import Retina
from attn.models.rnn_episode import rnn_episode

Policy = Literal["sample", "mean"]


@dataclass
class Episode:
    """What one episode produced (B = batch, T = glimpses).

    log_probs: (B, classes) class log-probabilities from h_T.
    log_pi: (B, T-1) log pi(l_t | h_t) of the sampled l_t, t = 1..T-1.
    baselines: (B, T-1) b_t for the same steps.
    locations: (B, T, 2) the sampled locations l_0 .. l_{T-1}, unclamped (the glimpses were taken at
        their clamp to [-1, 1]).
    """

    log_probs: torch.Tensor
    log_pi: torch.Tensor
    baselines: torch.Tensor
    locations: torch.Tensor


class RAM(nn.Module):
    def __init__(
        self,
        retina: Retina,
        glimpse: GlimpseNetwork,
        core: Core,
        *,
        num_classes: int,
        hidden_size: int,
        num_glimpses: int,
        policy_std: float,
        initial_location: Literal["random", "center"] = "random",
        detach_policy_input: bool = True,
        mean_readout: bool = False,
        two_phase: bool = False,
    ):
        """The model of the paper's figure 1 from its parts: the retina rho, the glimpse network f_g,
        the core f_h (d = ``hidden_size`` wide); it adds f_l (location, sigma = ``policy_std``), the
        baseline b_t and f_a (``num_classes``). T = ``num_glimpses``; l_0 is ``initial_location``.
        detach_policy_input: REINFORCE trains only f_l (its input h_t is detached). mean_readout: f_a
        reads the mean of h_1..h_T instead of h_T. two_phase: a Transformer core rolls out without
        gradients, then runs one causal pass over all glimpses with them (same outputs and gradients).
        :func:`attn.models.build.build_model` assembles it from a config."""
        super().__init__()
        self.num_glimpses = num_glimpses
        self.std = policy_std
        self.initial_location = initial_location
        self.detach_policy_input = detach_policy_input
        self.retina = retina
        self.glimpse = glimpse
        self.core = core
        self.locator = LocationNetwork(hidden_size)
        self.baseline = BaselineNetwork(hidden_size)
        self.classifier = Classifier(hidden_size, num_classes)
        # The rnn core with the default routing runs the hand-written episode (same outputs and
        # gradients, far fewer operations: attn/models/rnn_episode.py); False forces the loop below.
        self.mean_readout = mean_readout
        # (the hand-written episode returns h_1..h_{T-1} without a gradient: the mean readout takes the loop)
        self.hand_written = isinstance(self.core, RNNCore) and self.detach_policy_input and not self.mean_readout
        self.two_phase = isinstance(self.core, SequenceCore) and two_phase
        self._core_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.core.modules())

    def reinforce_only(self) -> list[nn.Module]:
        """The modules only the REINFORCE term trains: the location network f_l (mu_t)."""
        return [self.locator]

    def initial_locations(self, batch: int, device, dtype, generator: Optional[torch.Generator]) -> torch.Tensor:
        if self.initial_location == "center":
            return torch.zeros(batch, 2, device=device, dtype=dtype)
        return torch.rand(batch, 2, device=device, dtype=dtype, generator=generator) * 2.0 - 1.0

    def forward(
        self,
        images: torch.Tensor,
        policy: Policy = "sample",
        generator: Optional[torch.Generator] = None,
        copies: int = 1,
    ) -> Episode:
        """Run one episode.

        Args:
            images: (B, C, H, W) normalised images.
            policy: "sample" draws l_t ~ N(mu_t, sigma^2 I) (training, MC evaluation); "mean" takes
                l_t = mu_t (deterministic evaluation; log_pi is then evaluated at mu_t).
            generator: optional RNG for l_0 and the policy noise (reproducible evaluation).
            copies: M, episodes per image (MC evaluation): the batch becomes images.repeat(M), copy k of
                image b at row k * B + b; every output has M * B rows.
        """
        if copies > 1:
            images = images.repeat(copies, *([1] * (images.ndim - 1)))
        B = images.shape[0]
        T = self.num_glimpses
        device, dtype = images.device, images.dtype
        loc = self.initial_locations(B, device, dtype, generator)
        noise = None
        if policy == "sample" and T > 1:
            noise = torch.randn(T - 1, B, 2, device=device, dtype=dtype, generator=generator) * self.std
        if self._hand_written_now(device):
            h, hs, mus, locs = rnn_episode(self, images, loc, noise)
        elif self._two_phase_now():
            h, hs, mus, locs = self._two_phase(images, loc, noise)
        else:
            h, hs, mus, locs = self._loop(images, loc, noise)
        # hs (T-1, B, d) = h_1..h_{T-1}, mus (T-1, B, 2), locs (T, B, 2) = l_0..l_{T-1}: time first
        log_probs = self.classifier((hs.sum(0) + h) / T if self.mean_readout else h)
        if T > 1:
            log_pi = gaussian_log_prob(locs[1:], mus, self.std).t()
            baselines = self.baseline(hs.detach()).t()
        else:
            log_pi = baselines = images.new_zeros(B, 0)
        return Episode(log_probs, log_pi, baselines, locs.transpose(0, 1))

    def _hand_written_now(self, device: torch.device) -> bool:
        """The hand-written episode runs eagerly in the buffers' dtype: torch.compile and autocast
        take the loop (same mathematics), which they can trace and cast op by op."""
        return (
            self.hand_written
            and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled(device.type)
        )

    def _two_phase_now(self) -> bool:
        return self.two_phase and torch.is_grad_enabled() and not (self.training and self._core_dropout)

    def _two_phase(self, images: torch.Tensor, loc: torch.Tensor, noise: Optional[torch.Tensor]):
        """The episode of a Transformer core in two phases (module docstring); returns what
        :meth:`_loop` returns. Phase 1 keeps the glimpses rho(x, c_t) it took (they need no gradient:
        the locations are detached), so phase 2 starts at the glimpse network."""
        glimpses: list[torch.Tensor] = []
        with torch.no_grad():
            _, _, _, locs = self._loop(images, loc, noise, glimpses=glimpses)
        T, B = locs.shape[:2]
        g = self.glimpse(torch.stack(glimpses).flatten(0, 1), locs.clamp(-1.0, 1.0).flatten(0, 1))
        hs = self.core.forward_sequence(g.view(T, B, -1).transpose(0, 1)).transpose(0, 1)  # (T, B, d)
        h, hs = hs[-1], hs[:-1]
        mus = self.locator(hs.detach() if self.detach_policy_input else hs)
        return h, hs, mus, locs

    def _loop(
        self,
        images: torch.Tensor,
        loc: torch.Tensor,
        noise: Optional[torch.Tensor],
        glimpses: Optional[list[torch.Tensor]] = None,
    ):
        """The episode as a plain autograd loop over the modules (any core, any routing): h_T, and
        the states, means and locations stacked time first (see ``forward``).

        glimpses: a list to collect the T flattened glimpses in (B, k*C*g*g); only the locations are
        wanted then, so the core skips its last step and h_T comes back as None."""
        B, _, H, W = images.shape
        T = self.num_glimpses
        padded = self.retina.pad(images)
        state = self.core.init_state(B, images.device, images.dtype)
        locations, mus, hiddens = [loc], [], []
        h = None
        for t in range(T):
            seen = loc.clamp(-1.0, 1.0)
            patches = self.retina(padded, seen, H, W).flatten(1)
            if glimpses is not None:
                glimpses.append(patches)
                if t == T - 1:
                    break
            g = self.glimpse(patches, seen)
            h, state = self.core.step(g, state)
            if t == T - 1:
                break  # l_T would never be used: no emission, no log-prob, no baseline
            hiddens.append(h)
            mu = self.locator(h.detach() if self.detach_policy_input else h)
            loc = (mu + noise[t]).detach() if noise is not None else mu.detach()
            mus.append(mu)
            locations.append(loc)
        empty = images.new_zeros(0, B, self.core.hidden_size)
        hs = torch.stack(hiddens) if hiddens else empty
        return h, hs, torch.stack(mus) if mus else empty[..., :2], torch.stack(locations)

