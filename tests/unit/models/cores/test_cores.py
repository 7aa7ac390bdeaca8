"""The cores: cached incremental steps of the transformer cores (gpt2, trxl, gtrxl) against one causal
pass, causality, the Transformer-XL memory window, GTrXL's near-identity start, gradients, RAM end to
end, and the config checks. Tiny widths in float64 so equivalences hold to ~1e-10."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from attn.models import build_model
from attn.config import core_config, load_config, model_config
from attn.data.base import DataSpec
from attn.errors import ConfigError
from attn.losses import hybrid_loss
from attn.models.build import build_core
from attn.models.cores import SequenceCore
from attn.models.cores.gtrxl import GTrXLLayer

D, LAYERS, HEADS, T, B, IN = 16, 2, 2, 5, 3, 12
F64 = torch.float64

CASES = [
    pytest.param("gpt2", {}, id="gpt2"),
    pytest.param("trxl", {"norm": "post"}, id="trxl-post"),
    pytest.param("trxl", {"norm": "pre"}, id="trxl-pre"),
    pytest.param("gtrxl", {}, id="gtrxl"),
    pytest.param("trxl", {"memory_length": 2}, id="trxl-mem2"),
    pytest.param("gtrxl", {"memory_length": 2, "head_dim": 5}, id="gtrxl-mem2-hd5"),
]


def make_core(kind: str, input_size: int = IN, seed: int = 0, **options) -> SequenceCore:
    torch.manual_seed(seed)
    cfg = core_config(kind=kind, num_layers=options.pop("num_layers", LAYERS), num_heads=HEADS, **options)
    core = build_core(cfg, input_size, D, max_steps=T).to(F64)
    with torch.no_grad():  # move u, v (and b_g) off their initial values so every term is exercised
        for name, p in core.named_parameters():
            if name.endswith((".u", ".v", "b_g")):
                p.add_(0.3 * torch.randn_like(p))
    return core


def inputs(seed: int = 1, input_size: int = IN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, input_size, dtype=F64, generator=g)


def run_steps(core, x: torch.Tensor, keep_states: bool = False):
    state = core.init_state(x.shape[0], x.device, x.dtype)
    outs, states = [], []
    for t in range(x.shape[1]):
        h, state = core.step(x[:, t], state)
        outs.append(h)
        states.append(state)
    out = torch.stack(outs, dim=1)
    return (out, states) if keep_states else out


def close(a, b, rtol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, float(b.detach().abs().max())))


def grads(core, x, outputs, weights):
    params = [p for p in core.parameters()]
    return torch.autograd.grad((outputs * weights).sum(), params + [x])


@pytest.mark.parametrize("kind,options", CASES)
def test_cached_steps_equal_one_causal_pass_outputs_and_gradients(kind, options):
    core = make_core(kind, **options)
    x = inputs().requires_grad_(True)
    full = core.forward_sequence(x)
    stepped = run_steps(core, x)
    assert full.shape == stepped.shape == (B, T, D)
    close(stepped, full)
    w = torch.randn(B, T, D, dtype=F64, generator=torch.Generator().manual_seed(7))
    names = [n for n, _ in core.named_parameters()] + ["input"]
    for name, g_step, g_full in zip(names, grads(core, x, stepped, w), grads(core, x, full, w)):
        assert g_full.abs().sum() > 0, name
        torch.testing.assert_close(g_step, g_full, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind,options", CASES)
def test_changing_input_t_never_changes_earlier_outputs(kind, options):
    core = make_core(kind, **options)
    x = inputs()
    base_full, base_step = core.forward_sequence(x), run_steps(core, x)
    for t in range(T):
        x2 = x.clone()
        x2[:, t] += torch.randn(B, IN, dtype=F64)
        full, step = core.forward_sequence(x2), run_steps(core, x2)
        for a, b in ((full, base_full), (step, base_step)):
            torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-13)
            assert (a[:, t] - b[:, t]).abs().max() > 1e-6  # and step t itself does see it


@pytest.mark.parametrize("kind", ["gpt2", "trxl", "gtrxl"])
def test_state_is_explicit_and_grows_one_step_at_a_time(kind):
    core = make_core(kind)
    x = inputs()
    _, states = run_steps(core, x, keep_states=True)
    for t, s in enumerate(states, start=1):
        assert s.t == t and s.prefix is None
        assert len(s.layers) == LAYERS
        for layer in s.layers:
            K, V = layer[0], layer[1]
            assert K.shape == V.shape == (B, HEADS, t, D // HEADS)  # O(t) per step: one new key per step
    # stepping from the same state twice gives the same output: the state is never mutated
    h1, _ = core.step(x[:, 3], states[2])
    h2, _ = core.step(x[:, 3], states[2])
    assert torch.equal(h1, h2)
    close(h1, core.forward_sequence(x[:, :4])[:, -1])


def ref_relative_attention(attn, h: torch.Tensor, memory_length) -> torch.Tensor:
    """Slow reference: score(i,j) = q_i.k_j + q_i.W_R r_{i-j} + u.k_j + v.W_R r_{i-j}, term by term."""
    Bh, Th, d = h.shape
    H, dh = attn.num_heads, attn.head_dim
    Wq, Wk, Wv = attn.qkv.weight.view(3, H, dh, d)
    WR = attn.r_net.weight.view(H, dh, d)
    out = torch.zeros(Bh, Th, H, dh, dtype=h.dtype)
    for i in range(Th):
        lo = max(0, i - memory_length) if memory_length else 0
        for n in range(H):
            q = h[:, i] @ Wq[n].T  # (B, dh)
            scores, values = [], []
            for j in range(lo, i + 1):
                k, v = h[:, j] @ Wk[n].T, h[:, j] @ Wv[n].T
                dist = torch.tensor([float(i - j)], dtype=h.dtype)
                inv = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=h.dtype) / d)
                r = torch.cat([torch.sin(dist * inv), torch.cos(dist * inv)])[:d]
                wr = WR[n] @ r  # (dh,)
                s = (q * k).sum(-1) + q @ wr + (attn.u[n] * k).sum(-1) + attn.v[n] @ wr
                scores.append(s / dh**0.5)
                values.append(v)
            p = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # (B, window)
            out[:, i, n] = (p[:, :, None] * torch.stack(values, dim=1)).sum(1)
    return attn.out(out.reshape(Bh, Th, H * dh))


@pytest.mark.parametrize(
    "kind,options",
    [
        ("trxl", {"norm": "post", "memory_length": 2}),
        ("trxl", {"norm": "pre", "memory_length": 3}),
        ("trxl", {"norm": "post"}),
        ("gtrxl", {"memory_length": 2}),
    ],
)
def test_relative_attention_and_memory_window_match_a_slow_reference(kind, options):
    core = make_core(kind, **options)
    x = inputs()
    N = options.get("memory_length")
    y = core.proj(x)
    for layer in core.layers:
        y = layer.block(y, lambda h, layer=layer: ref_relative_attention(layer.attn, h, N), None)
    ref = core.final_norm(y)
    close(core.forward_sequence(x), ref)
    stepped, states = run_steps(core, x, keep_states=True)
    close(stepped, ref)
    if N:
        for s in states:  # the memory never holds more than N earlier steps (nor more than N+1 distances)
            for K, V, R in s.layers:
                assert K.shape[2] <= N and V.shape[2] <= N and R.shape[0] <= N + 1
        assert states[-1].layers[0][0].shape[2] == N


def test_one_layer_trxl_window_equals_the_pass_over_the_window():
    N = 2
    core = make_core("trxl", memory_length=N, num_layers=1)
    x = inputs()
    stepped = run_steps(core, x)
    for t in range(T):
        window = x[:, max(0, t - N) : t + 1]
        close(stepped[:, t], core.forward_sequence(window)[:, -1])
    # and the window matters: without it, step T-1 sees more
    unlimited = make_core("trxl", num_layers=1)
    assert (unlimited.forward_sequence(x)[:, -1] - stepped[:, -1]).abs().max() > 1e-6


def test_gtrxl_layer_starts_near_the_identity():
    x = torch.randn(B, T, D, dtype=F64, generator=torch.Generator().manual_seed(3))

    def distance(gate_bias: float) -> float:
        torch.manual_seed(0)
        layer = GTrXLLayer(D, HEADS, D // HEADS, 4 * D, gate_bias=gate_bias).to(F64)
        assert torch.equal(layer.attn.u, torch.zeros_like(layer.attn.u))  # u, v zero-initialised
        assert torch.equal(layer.attn.v, torch.zeros_like(layer.attn.v))
        y = layer.forward_sequence(x, None)
        return float((y - x).detach().norm() / x.norm())

    near, far = distance(2.0), distance(0.0)
    assert near < 0.4, near  # z ~ sigmoid(-2) ~ 0.12: the stream passes mostly unchanged
    assert far > 2 * near, (near, far)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gpt2", "trxl", "gtrxl"])
def test_gradients_reach_every_parameter(kind):
    core = make_core(kind) if kind not in ("rnn", "lstm") else build_core(core_config(kind=kind), IN, D).to(F64)
    x = inputs()
    out = run_steps(core, x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind,options", CASES)
def test_use_cache_false_gives_the_same_outputs(kind, options):
    cached = make_core(kind, **options)
    uncached = make_core(kind, use_cache=False, **options)
    uncached.load_state_dict(cached.state_dict())
    x = inputs()
    out, states = run_steps(uncached, x, keep_states=True)
    assert states[-1].prefix.shape == (B, T, IN) and states[-1].layers == ()
    close(out, run_steps(cached, x))


def test_gpt2_positions_are_checked():
    core = make_core("gpt2")
    assert core.n_positions == T
    with pytest.raises(ValueError, match="n_positions"):
        run_steps(core, torch.randn(B, T + 1, IN, dtype=F64))
    with pytest.raises(ConfigError, match="n_positions"):
        build_core(core_config(kind="gpt2", n_positions=3), D, D, max_steps=4)
    assert build_core(core_config(kind="gpt2", n_positions=8), D, D, max_steps=4).n_positions == 8
    assert len(list(core.gpt2.parameters())) > 0 and core.gpt2.wte is None


SPEC = DataSpec(1, 12, 12, 10, tuple("0123456789"))


@pytest.mark.parametrize(
    "core",
    [
        {"kind": "gpt2", "num_layers": 2, "num_heads": 2},
        {"kind": "trxl", "num_layers": 2, "num_heads": 2, "memory_length": 2},
        {"kind": "gtrxl", "num_layers": 2, "num_heads": 2, "inner_size": 32},
        {"kind": "trxl", "use_cache": False, "norm": "pre"},
    ],
)
def test_ram_end_to_end(core):
    torch.manual_seed(0)
    cfg = model_config(core=core, num_glimpses=4, hidden_size=16, what_size=8, where_size=8, retina={"patch_size": 4})
    model = build_model(cfg, SPEC)
    images, targets = torch.randn(3, 1, 12, 12), torch.tensor([1, 2, 3])
    episode = model(images)
    assert episode.log_probs.shape == (3, 10) and episode.log_pi.shape == (3, 3)
    terms = hybrid_loss(episode, targets, rl_coef=0.01)
    terms.total.backward()
    assert torch.isfinite(terms.total)
    for name, p in model.core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_config_errors_name_the_key():
    # The schema refuses a width the heads do not divide when the config is loaded ...
    with pytest.raises(ValidationError, match="num_heads"):
        model_config(hidden_size=10, core={"kind": "gpt2", "num_heads": 3})
    with pytest.raises(ValidationError, match="num_heads"):
        model_config(hidden_size=10, core={"kind": "trxl", "num_heads": 3})
    # ... and build_core repeats the check for cores built outside a ModelConfig.
    with pytest.raises(ConfigError, match="num_heads"):
        build_core(core_config(kind="gpt2", num_heads=3), 10, 10)
    # trxl/gtrxl may set head_dim explicitly instead
    build_core(core_config(kind="trxl", num_heads=3, head_dim=4), 10, 10)
    with pytest.raises(ConfigError, match="head_dim"):
        build_core(core_config(kind="gpt2", num_heads=2, head_dim=4), 10, 10)
    with pytest.raises(ValidationError, match="num_layers"):
        core_config(kind="rnn", num_layers=2)
    with pytest.raises(ValidationError, match="norm"):
        core_config(kind="trxl", norm="sideways")
    with pytest.raises(ValidationError, match="memory_length"):
        core_config(kind="gpt2", memory_length=4)
    with pytest.raises(ValidationError, match="gate_bias"):
        core_config(kind="trxl", gate_bias=1.0)
    with pytest.raises(ValidationError, match="num_heads"):
        core_config(kind="gtrxl", num_heads=0)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.core.kind=gpt2", "model.core.memory_length=3"])
    assert "model.core" in str(err.value) and "memory_length" in str(err.value) and "\n" not in str(err.value)
    # a full round trip (as checkpoints store it) stays valid
    cfg = core_config(kind="gtrxl", num_layers=2, memory_length=0, gate_bias=1.0)
    assert core_config(**cfg.model_dump()) == cfg


# ---------------------------------------------------------------------------------------------
# cross-attention to a fixed memory (DRAM's ViT tokens)
# ---------------------------------------------------------------------------------------------
M_LEN = 4


def memory(seed: int = 5) -> torch.Tensor:
    return torch.randn(B, M_LEN, D, dtype=F64, generator=torch.Generator().manual_seed(seed))


def ref_cross_attention(cross, h: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
    """Slow reference: per head, softmax_j(q . k_j / sqrt(dh)) v_j over the memory slots j."""
    H, dh = cross.num_heads, cross.head_dim
    Wq = cross.q.weight.view(H, dh, -1)
    Wk, Wv = cross.kv.weight.view(2, H, dh, -1)
    out = torch.zeros(*h.shape[:-1], H, dh, dtype=h.dtype)
    for n in range(H):
        q = h @ Wq[n].T  # (B, T, dh)
        k, v = mem @ Wk[n].T, mem @ Wv[n].T  # (B, M, dh)
        for b in range(h.shape[0]):
            for i in range(h.shape[1]):
                p = torch.softmax(torch.stack([q[b, i] @ k[b, j] for j in range(mem.shape[1])]) / dh**0.5, 0)
                out[b, i, n] = (p[:, None] * v[b]).sum(0)
    return cross.out(out.flatten(-2))


def make_cross_core(kind: str, **options) -> SequenceCore:
    torch.manual_seed(0)
    cfg = core_config(kind=kind, num_layers=LAYERS, num_heads=HEADS, **options)
    return build_core(cfg, IN, D, max_steps=T, cross_attention=True).to(F64)


def test_cross_attention_matches_a_slow_reference():
    core = make_cross_core("gtrxl")
    cross = core.layers[0].cross
    h, mem = inputs(input_size=D), memory()
    close(cross(h, cross.memory_kv(mem)), ref_cross_attention(cross, h, mem))
    close(cross(h[:, 0], cross.memory_kv(mem)), ref_cross_attention(cross, h[:, :1], mem)[:, 0])


@pytest.mark.parametrize("kind", ["gpt2", "trxl", "gtrxl"])
def test_cross_attention_cores_step_like_one_pass_and_read_the_memory(kind):
    core = make_cross_core(kind)
    x, mem = inputs(), memory()
    full = core.forward_sequence(x, memory=mem)
    state = core.init_state(B, x.device, x.dtype, memory=mem)
    outs = []
    for t in range(T):
        h, state = core.step(x[:, t], state)
        outs.append(h)
    close(torch.stack(outs, 1), full)
    # every position depends on the memory, and on every slot of it
    other = mem.clone()
    other[:, -1] += 1.0
    changed = (core.forward_sequence(x, memory=other) - full).abs().amax(dim=(0, 2))
    assert (changed > 1e-6).all()
    # gradients reach the memory (the ViT projection trains through it) and the cross-attention weights
    mem_g = mem.clone().requires_grad_(True)
    core.forward_sequence(x, memory=mem_g).sum().backward()
    assert mem_g.grad.abs().sum() > 0
    cross = [p for n, p in core.named_parameters() if "cross" in n or "crossattention" in n]
    assert cross and all(p.grad is not None and p.grad.abs().sum() > 0 for p in cross)
    # the no-cache path gives the same outputs
    core.use_cache = False
    state = core.init_state(B, x.device, x.dtype, memory=mem)
    h, state = core.step(x[:, 0], state)
    close(h, full[:, 0])


def test_a_core_without_cross_attention_refuses_a_memory_and_recurrent_cores_have_none():
    core = make_core("trxl")
    with pytest.raises(ValueError, match="cross_attention"):
        core.init_state(B, torch.device("cpu"), F64, memory=memory())
    with pytest.raises(ConfigError, match="no cross-attention"):
        build_core(core_config(kind="lstm"), IN, D, cross_attention=True)
