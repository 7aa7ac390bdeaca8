"""Deep Recurrent Attention Model (Ba et al. 2015, "Multiple Object Recognition with Visual Attention").

DRAM reads a label sequence (y_1 .. y_L: the digits of a house number, then the end token) from
images x (B, C, H, W), glimpse by glimpse, with two stacked cores:

    bottom core r1 (classification):  h1_t = r1(g_t, h1_{t-1})
    top core r2 (location):           h2_t = r2(h1_t, h2_{t-1})

    context step:  ctx = f_ctx(x);  recurrent r2: h2_0 = ctx (cell state 0); transformer r2: h2_0 = r2(ctx)
                   l_1 ~ N(mu(h2_0), sigma^2 I), b_0 = Linear(h2_0.detach())
    per label slot j = 1..L, per glimpse k = 1..E+N (E = explore_steps, N = glimpses_per_digit):
                   g_t = f_g(rho(gray(x), c_t), c_t), c_t = clamp(l_t, -1, 1);  h1_t = r1(g_t);  h2_t = r2(h1_t)
                   after the slot's last glimpse: log p(y_j | x) = log_softmax(Linear(h1_t))
                   l_{t+1} ~ N(mu(h2_t), sigma^2 I), b_t = Linear(h2_t.detach())   (not after the very last glimpse)

With the ``vit`` context there is no ctx vector: a learned query q is r1's first input and its
output h1_0 opens r2, whose every layer cross-attends to the ViT tokens (B, M, d) for the whole
episode (h2_0 = r2(h1_0 | tokens)); everything after is as above.

Glimpses read the channel mean of x (``glimpse_color`` gray) or all channels (rgb).

A Transformer DRAM uses the same two streams (Ba et al.'s layers become two causal Transformers,
each stepping with its key/value cache): r1 reads (g_1 .. g_t), r2 reads (ctx, h1_1 .. h1_t). Cores
with relative positions only (trxl, gtrxl) read g_s + p_s at glimpse s, p (G, d) a learned step
embedding: relative attention alone cannot tell the last glimpse of slot 1 from that of slot 2 (for
identical inputs its outputs are identical at every step), so the classifier could not tell which
token to emit.
There are G = L (E + N) glimpses; step s = 0 .. G-1 emits the location of glimpse s (step 0 from the
context), so log_pi and baselines are (B, G) and ``step_slot[s]`` = s // (E + N) is the label slot
whose glimpse uses that location. No teacher forcing: labels are never fed back.

On a classification task (one label per image, e.g. mnist_addition) there is one slot: its
E + N glimpses, then the one prediction, returned as a RAM :class:`~attn.models.ram.Episode`.

Gradient routing (``model.policy_grad``; the sampled locations are always detached):
    top (default): mu reads h2; r2 reads h1.detach(). REINFORCE trains the location net, r2 and the
        context net (as in the paper); classification trains the glimpse net and r1.
    detached: mu reads h2.detach(): REINFORCE trains only the location net; r2 and the context net
        then receive no gradient at all (reproduces an earlier implementation).
    full: mu reads h2 and r2 reads h1: REINFORCE reaches everything upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from attn.models.cores import Core, SequenceCore
from attn.models.glimpse import ConvGlimpseNetwork
from attn.models.policy import BaselineNetwork, Classifier, LocationNetwork, gaussian_log_prob
from attn.models.ram import Episode
from attn.models.retina import Retina

Policy = Literal["sample", "mean"]


@dataclass
class SequenceEpisode:
    """What one DRAM episode produced (B = batch, L = label slots, G = glimpses = L (E + N)).

    log_probs: (B, L, classes) token log-probabilities, one row per label slot.
    log_pi: (B, G) log pi of the location used by glimpse s (s = 0: emitted from the context).
    baselines: (B, G) b for the same steps.
    locations: (B, G, 2) the sampled locations, unclamped (glimpses are taken at their clamp to [-1, 1]).
    step_slot: (G,) int64, the label slot each glimpse (and its location) belongs to.
    """

    log_probs: torch.Tensor
    log_pi: torch.Tensor
    baselines: torch.Tensor
    locations: torch.Tensor
    step_slot: torch.Tensor


class DRAM(nn.Module):
    def __init__(
        self,
        retina: Retina,
        glimpse: ConvGlimpseNetwork,
        context: nn.Module,
        lower: Core,
        upper: Core,
        *,
        num_classes: int,
        max_tokens: int,
        hidden_size: int,
        explore_steps: int,
        glimpses_per_digit: int,
        policy_std: float,
        routing: Literal["detached", "top", "full"] = "top",
        rgb_glimpses: bool = False,
        query: Optional[nn.Parameter] = None,
        classify: bool = False,
    ):
        """DRAM from its parts: the retina, the glimpse network, the context network, the lower
        (classification) core r^(1) and the upper (location) core r^(2), d = ``hidden_size``; it adds
        the location, baseline and classifier heads (``num_classes`` tokens, L = ``max_tokens`` slots).
        Per slot ``explore_steps`` glimpses without a prediction, then ``glimpses_per_digit``. query: with
        a token context (vit) the learned first input of r^(1), in place of a context vector. classify:
        a classification task (one label per image, ``max_tokens`` 1): the episode is a RAM
        :class:`~attn.models.ram.Episode` whose one prediction follows the slot's glimpses.
        :func:`attn.models.build.build_model` assembles it from a config."""
        super().__init__()
        d = hidden_size
        self.std = policy_std
        self.max_tokens = max_tokens
        self.explore = explore_steps
        self.steps_per_token = explore_steps + glimpses_per_digit
        self.routing = routing
        self.rgb_glimpses = rgb_glimpses
        if classify and max_tokens != 1:
            raise ValueError(f"a classifying DRAM reads one label slot, not {max_tokens}")
        self.classify = classify
        self.retina = retina
        self.glimpse = glimpse
        self.context = context
        self.reads_memory = query is not None
        if query is not None:
            self.query = query  # q: r1's first input, in place of ctx
        self.lower = lower
        self.upper = upper
        self.locator = LocationNetwork(d)
        self.baseline = BaselineNetwork(d)
        self.classifier = Classifier(d, num_classes)
        self.step_embedding: Optional[nn.Parameter] = None
        if isinstance(lower, SequenceCore) and not lower.absolute_positions:
            # p_s (G, d), GPT-2's initialisation of its learned positions
            self.step_embedding = nn.Parameter(torch.randn(max_tokens * self.steps_per_token, d) * 0.02)

    def reinforce_only(self) -> list[nn.Module]:
        """The modules only the REINFORCE term trains: the location network, the top core r2 and the
        context network (the classification reads h1, which never depends on them; with
        ``policy_grad`` detached they get no gradient at all)."""
        return [self.locator, self.upper, self.context]

    def _context_step(self, images: torch.Tensor, copies: int = 1):
        """The context step -> (h2_0, state of r2, state of r1), for ``copies`` episodes per image
        (rows copy-major): the context network runs once per image, its output is repeated."""
        B, device, dtype = images.shape[0] * copies, images.device, images.dtype
        lower_state = self.lower.init_state(B, device, dtype)
        if self.reads_memory:
            tokens = self.context(images)  # (B, M, d)
            if copies > 1:
                tokens = tokens.repeat(copies, 1, 1)
            h1, lower_state = self.lower.step(self.query.expand(B, -1), lower_state)
            upper_state = self.upper.init_state(B, device, dtype, memory=tokens)
            h2, upper_state = self.upper.step(h1 if self.routing == "full" else h1.detach(), upper_state)
            return h2, upper_state, lower_state
        ctx = self.context(images)
        if copies > 1:
            ctx = ctx.repeat(copies, 1)
        if isinstance(self.upper, SequenceCore):
            h2, upper_state = self.upper.step(ctx, self.upper.init_state(B, device, dtype))
            return h2, upper_state, lower_state
        return ctx, self.upper.state_from_hidden(ctx), lower_state

    def forward(
        self,
        images: torch.Tensor,
        policy: Policy = "sample",
        generator: Optional[torch.Generator] = None,
        num_slots: Optional[int] = None,
        copies: int = 1,
    ) -> SequenceEpisode | Episode:
        """Run one episode (an :class:`~attn.models.ram.Episode` when ``classify``).

        Args:
            images: (B, C, H, W) normalised images; the context net sees all C channels, the glimpses
                their channel mean (gray) or all of them (glimpse_color rgb).
            policy: "sample" draws l ~ N(mu, sigma^2 I); "mean" takes l = mu (log_pi at mu).
            generator: optional RNG of the policy noise (reproducible evaluation).
            num_slots: L, label slots to read (default: spec.max_tokens). Training passes the batch's
                longest label: later slots could only ever be masked out.
            copies: M, episodes per image (MC evaluation), rows copy-major (copy k of image b at row
                k * B + b); the context network still runs once per image.
        """
        h2, upper_state, lower_state = self._context_step(images, copies)
        if copies > 1:
            images = images.repeat(copies, 1, 1, 1)
        B, C, H, W = images.shape
        L = num_slots or self.max_tokens
        G = L * self.steps_per_token
        device, dtype = images.device, images.dtype
        noise = None
        if policy == "sample":
            noise = torch.randn(G, B, 2, device=device, dtype=dtype, generator=generator) * self.std
        source = images if self.rgb_glimpses or C == 1 else images.mean(dim=1, keepdim=True)
        padded = self.retina.pad(source)
        tops, mus, locations, token_logp = [h2], [], [], []
        for s in range(G):
            mu = self.locator(h2.detach() if self.routing == "detached" else h2)
            loc = (mu + noise[s]).detach() if noise is not None else mu.detach()
            mus.append(mu)
            locations.append(loc)
            seen = loc.clamp(-1.0, 1.0)  # the sensor's limits: the retina and the where branch read the same
            g = self.glimpse(self.retina(padded, seen, H, W), seen)
            if self.step_embedding is not None:
                g = g + self.step_embedding[s]
            h1, lower_state = self.lower.step(g, lower_state)
            if (s + 1) % self.steps_per_token == 0:
                token_logp.append(self.classifier(h1))
            if s == G - 1:
                break  # the location after the last glimpse would never be used
            h2, upper_state = self.upper.step(h1 if self.routing == "full" else h1.detach(), upper_state)
            tops.append(h2)

        locs = torch.stack(locations, dim=1)  # (B, G, 2)
        log_pi = gaussian_log_prob(locs, torch.stack(mus, dim=1), self.std)
        baselines = self.baseline(torch.stack(tops, dim=1).detach())
        if self.classify:  # every location was used by a glimpse: log_pi and baselines are (B, G)
            return Episode(token_logp[0], log_pi, baselines, locs)
        step_slot = torch.arange(G, device=device) // self.steps_per_token
        return SequenceEpisode(torch.stack(token_logp, dim=1), log_pi, baselines, locs, step_slot)
