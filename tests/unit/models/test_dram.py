"""DRAM: the sequence loss by hand, the rollout re-run step by step, gradient routing, evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from attn.config import load_config
from attn.data.base import IGNORE_INDEX as I
from attn.data.base import BatchLoader, DataSpec, Split, TaskData
from attn.engine.objective import Sequences
from attn.engine.passes import evaluate
from attn.losses import sequence_hybrid_loss, sequence_outcome
from attn.models import build_model
from attn.models.cores import SequenceCore
from attn.models.dram import DRAM, SequenceEpisode
from attn.models.policy import gaussian_log_prob

SPEC = DataSpec(1, 30, 30, 11, ("<end>",) + tuple("123456789") + ("0",), max_tokens=4, end_token=0)


def dram(*overrides: str, spec: DataSpec = SPEC) -> DRAM:
    base = ["data.task=svhn", "data.max_digits=3", "model.name=dram", "model.retina.patch_size=9", "model.hidden_size=16"]
    base += ["model.conv_channels=[4,4,8]"]
    cfg = load_config(None, base + list(overrides))
    return build_model(cfg.model, spec)


def test_sequence_outcome_hand_worked():
    y = torch.tensor([[3, 4, 0, I], [3, 4, 0, I], [1, 0, I, I], [2, 2, 2, 0]])
    pred = torch.tensor([[3, 4, 0, 5], [3, 5, 0, 0], [2, 0, 0, 0], [2, 2, 2, 1]])
    out = sequence_outcome(pred, y, end_token=0)
    # Sample 0 is read completely (the slot after its end token is not active); sample 1 stops at
    # its second token, sample 2 at its first; sample 3 misses only its end token.
    assert out.active.int().tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert out.reward.tolist() == [3, 1, 0, 3]
    assert out.correct.tolist() == [True, False, False, False]
    assert out.token_correct.sum(1).tolist() == [3, 2, 1, 3]


def test_sequence_hybrid_loss_hand_worked():
    # B = 2, L = 2 slots, one glimpse per slot (G = 2), 3 classes, end token 0.
    p = torch.tensor(
        [
            [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]],  # predicts (1, 0)
            [[0.2, 0.3, 0.5], [0.5, 0.4, 0.1]],  # predicts (2, 0)
        ]
    )
    y = torch.tensor([[1, 0], [1, 0]])  # sample 0 right (R = 2); sample 1 wrong at slot 0 (R = 0)
    log_pi = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    base = torch.tensor([[0.5, 1.0], [0.25, 2.0]])
    ep = SequenceEpisode(p.log(), log_pi, base, torch.zeros(2, 2, 2), torch.tensor([0, 1]))
    t = sequence_hybrid_loss(ep, y, rl_coef=0.1, end_token=0)
    # NLL over the active slots: sample 0 both slots, sample 1 only slot 0 (its first mistake).
    nll = -(math.log(0.7) + math.log(0.6) + math.log(0.3)) / 3
    # Valid steps: sample 0 both (R = 2), sample 1 only step 0 (R = 0).
    mse = ((0.5 - 2) ** 2 + (1.0 - 2) ** 2 + (0.25 - 0) ** 2) / 3
    rl = ((1.0 * 1.5 + 2.0 * 1.0) + (3.0 * -0.25)) / 2
    assert t.nll.item() == pytest.approx(nll)
    assert t.baseline.item() == pytest.approx(mse)
    assert t.reinforce.item() == pytest.approx(rl)
    assert t.total.item() == pytest.approx(nll + mse + 0.1 * rl)
    assert t.reward.tolist() == [2.0, 0.0] and t.correct.tolist() == [True, False]
    assert t.glimpses.tolist() == [2.0, 1.0]

    # token_loss all: L_cls reads sample 1's end slot too; REINFORCE and the baseline do not change.
    a = sequence_hybrid_loss(ep, y, rl_coef=0.1, end_token=0, all_tokens=True)
    assert a.nll.item() == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.3) + math.log(0.5)) / 4)
    assert a.baseline.item() == pytest.approx(mse) and a.reinforce.item() == pytest.approx(rl)
    assert a.glimpses.tolist() == [2.0, 1.0]


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
@pytest.mark.parametrize("explore", [0, 2])
def test_rollout_rerun_by_hand(core, explore):
    """Replay the recorded locations through the modules: the retina read exactly those locations,
    log pi scores exactly those samples, and the slots are classified from the right glimpses."""
    torch.manual_seed(0)
    n = 2
    model = dram(f"model.core.kind={core}", f"model.explore_steps={explore}", f"model.glimpses_per_digit={n}", "model.policy_std=0.2")
    model = model.double()
    x = torch.randn(3, 1, 30, 30, dtype=torch.float64)
    ep = model(x, num_slots=3)
    G = 3 * (explore + n)
    assert ep.log_probs.shape == (3, 3, 11) and ep.log_pi.shape == ep.baselines.shape == (3, G)
    assert ep.step_slot.tolist() == [s // (explore + n) for s in range(G)]

    padded = model.retina.pad(x)
    h2, s2, s1 = model._context_step(x)
    slots = []
    for s in range(G):
        loc = ep.locations[:, s]
        torch.testing.assert_close(ep.log_pi[:, s], gaussian_log_prob(loc, model.locator(h2), 0.2))
        torch.testing.assert_close(ep.baselines[:, s], model.baseline(h2))
        g = model.glimpse(model.retina(padded, loc, 30, 30), loc)
        if core == "gtrxl":  # relative positions only: r1 reads the step embedding with the glimpse
            g = g + model.step_embedding[s]
        h1, s1 = model.lower.step(g, s1)
        if s % (explore + n) == explore + n - 1:
            slots.append(model.classifier(h1))
        h2, s2 = model.upper.step(h1, s2)
    torch.testing.assert_close(ep.log_probs, torch.stack(slots, 1))


def test_lstm_context_sets_the_top_state_and_transformer_reads_it():
    torch.manual_seed(0)
    lstm = dram("model.core.kind=lstm")
    x = torch.randn(2, 1, 30, 30)
    ctx = lstm.context(x)
    h2, (h, c), _ = lstm._context_step(x)
    assert torch.equal(h2, ctx) and torch.equal(h, ctx) and not c.any()
    tr = dram("model.core.kind=gpt2")
    assert isinstance(tr.upper, SequenceCore)
    h2, state, lower = tr._context_step(x)
    assert state.t == 1 and lower.t == 0 and h2.shape == (2, 16)
    torch.testing.assert_close(h2, tr.upper.forward_sequence(tr.context(x)[:, None])[:, 0])


@pytest.mark.parametrize("core", ["gpt2", "trxl", "gtrxl"])
def test_transformer_dram_cache_matches_recompute(core):
    torch.manual_seed(0)
    cached = dram(f"model.core.kind={core}")
    plain = dram(f"model.core.kind={core}", "model.core.use_cache=false")
    plain.load_state_dict(cached.state_dict())
    x = torch.randn(4, 1, 30, 30)
    a = cached(x, policy="mean", num_slots=2)
    b = plain(x, policy="mean", num_slots=2)
    torch.testing.assert_close(a.log_probs, b.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.locations, b.locations, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("core", ["gpt2", "trxl", "gtrxl"])
def test_transformer_dram_tells_its_label_slots_apart(core):
    """The same glimpse at every step (a blank image, the location net zeroed: every glimpse at the
    centre): relative attention alone (trxl, gtrxl) then gives the same h1 at every step, and every
    slot would read the same token. r1's step embedding (trxl, gtrxl) or GPT-2's learned positions
    make the slots' distributions differ."""
    torch.manual_seed(0)
    model = dram(f"model.core.kind={core}", "model.glimpses_per_digit=2").eval()
    for p in model.locator.parameters():
        torch.nn.init.zeros_(p)
    x = torch.zeros(2, 1, 30, 30)
    with torch.no_grad():
        ep = model(x, policy="mean", num_slots=3)
    assert not ep.locations.any()
    logp = ep.log_probs
    assert not torch.allclose(logp[:, 0], logp[:, 1]) and not torch.allclose(logp[:, 1], logp[:, 2])
    assert (model.step_embedding is None) == (core == "gpt2")
    if model.step_embedding is not None:
        with torch.no_grad():
            model.step_embedding.zero_()
            same = model(x, policy="mean", num_slots=3).log_probs
        torch.testing.assert_close(same[:, 1], same[:, 0])
        torch.testing.assert_close(same[:, 2], same[:, 0])


def _groups(model, loss) -> set[str]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _terms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 1, 30, 30, generator=g)
    # Labels the untrained model reads right at slot 0 for some samples, so later slots count too.
    with torch.no_grad():
        first = model(x, policy="mean", num_slots=1).log_probs[:, 0].argmax(-1)
    y = torch.stack([first, torch.randint(1, 11, (16,), generator=g), torch.zeros(16, dtype=torch.long)], 1)
    y[::2, 0] = torch.randint(1, 11, (8,), generator=g)
    return sequence_hybrid_loss(model(x, num_slots=3), y, rl_coef=1.0, end_token=0)


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_gradient_routing_top(core):
    torch.manual_seed(0)
    model = dram(f"model.core.kind={core}")
    t = _terms(model)
    # Classification: the glimpse net, the bottom core and the classifier only (and gtrxl's step embedding).
    assert _groups(model, t.nll) == {"glimpse", "lower", "classifier"} | ({"step_embedding"} if core == "gtrxl" else set())
    # REINFORCE (the paper's routing): the location net, the top core and the context net.
    assert _groups(model, t.reinforce) == {"locator", "upper", "context"}
    assert _groups(model, t.baseline) == {"baseline"}
    model.zero_grad(set_to_none=True)
    t.total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_gradient_routing_detached_and_full():
    torch.manual_seed(0)
    model = dram("model.policy_grad=detached")
    assert _groups(model, _terms(model).reinforce) == {"locator"}
    model = dram("model.policy_grad=full")
    assert _groups(model, _terms(model).reinforce) == {"locator", "upper", "context", "lower", "glimpse"}


def test_rgb_input_context_sees_colour_glimpses_see_gray():
    spec = DataSpec(3, 30, 30, 11, SPEC.class_names, max_tokens=4, end_token=0)
    torch.manual_seed(0)
    model = dram("data.color=rgb", spec=spec)
    x = torch.randn(2, 3, 30, 30)
    ep = model(x, policy="mean", num_slots=2)
    assert model.context.features[0].in_channels == 3 and model.glimpse.convs[0].in_channels == 1
    assert ep.log_probs.shape == (2, 2, 11)


def test_score_batch_and_mc_evaluation_with_explore():
    y = torch.tensor([[3, 0, I], [5, 6, 0]])
    lp = torch.full((2, 3, 11), -10.0)
    lp[0, 0, 3] = lp[0, 1, 0] = lp[0, 2, 0] = 0.0  # sample 0 read right
    lp[1, 0, 5] = lp[1, 1, 7] = lp[1, 2, 0] = 0.0  # sample 1 wrong at its second digit
    nll, tokens, correct, tok_ok, dig_ok, digits, reward, count = Sequences(DataSpec(1, 8, 8, 11, tuple("e123456789") + ("0",), 3, 0)).score_batch(lp, y).tolist()
    assert (tokens, correct, tok_ok, dig_ok, digits, reward, count) == (5, 1, 4, 2, 3, 3, 2)
    assert nll == pytest.approx(10.0)

    # A whole evaluation pass with M > 1 copies and explore steps runs and scores every image once.
    torch.manual_seed(0)
    model = dram("model.explore_steps=1")
    n = 10
    labels = torch.full((n, 4), I)
    labels[:, 0] = torch.randint(1, 11, (n,))
    labels[:, 1] = 0
    labels[:3, 1], labels[:3, 2] = 4, 0
    split = Split(torch.randint(0, 256, (n, 1, 34, 34), dtype=torch.uint8), labels, torch.arange(n))
    data = TaskData(SPEC, split, split, split, 0.5, 0.25, crop=30)
    loader = BatchLoader(split, 4, shuffle=False)
    out = evaluate(model, loader, data, device=torch.device("cpu"), policy="sample", mc_samples=3, seed=1)
    assert out["count"] == n and 0.0 <= out["accuracy"] <= 1.0 and {"token_accuracy", "digit_accuracy", "reward"} <= set(out)
    again = evaluate(model, loader, data, device=torch.device("cpu"), policy="sample", mc_samples=3, seed=1)
    assert again == out  # seeded: evaluation is deterministic


def test_snapshot_context_is_the_cnn_on_an_area_downsampled_copy():
    torch.manual_seed(0)
    model = dram("model.context.kind=snapshot", "model.context.snapshot_size=24")
    x = torch.randn(2, 1, 30, 30)
    # float64 reference: area averaging of a 30 -> 24 resize is a fixed linear map; check it against a
    # slow per-output-pixel loop over the exact bins of adaptive average pooling.
    small = torch.nn.functional.interpolate(x.double(), size=(24, 24), mode="area")
    ref = torch.zeros_like(small)
    for i in range(24):
        for j in range(24):
            r0, r1 = (i * 30) // 24, -((-(i + 1) * 30) // 24)
            c0, c1 = (j * 30) // 24, -((-(j + 1) * 30) // 24)
            ref[:, :, i, j] = x.double()[:, :, r0:r1, c0:c1].mean(dim=(-1, -2))
    torch.testing.assert_close(small, ref)
    torch.testing.assert_close(model.context(x), model.context.cnn(small.float()), rtol=1e-5, atol=1e-5)
    assert model(x, policy="mean", num_slots=2).log_probs.shape == (2, 2, 11)
    with pytest.raises(Exception, match="snapshot_size"):
        dram("model.context.snapshot_size=24")


# ---------------------------------------------------------------------------------------------
# backbone contexts: resnet50 and vit (random init; weights from local files)
# ---------------------------------------------------------------------------------------------
TINY_VIT = {
    "hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48,
    "image_size": 32, "patch_size": 16, "num_channels": 3,
}


def tiny_vit_config(tmp_path) -> str:
    import json

    path = tmp_path / "vit.json"
    path.write_text(json.dumps(TINY_VIT))
    return str(path)


def _backbone_unchanged_by_a_training_step(model, x):
    """One SGD step in train mode: the frozen backbone keeps its weights and batch-norm statistics,
    stays in eval mode, and gets no gradient; the projection learns."""
    before = {k: v.clone() for k, v in model.context.backbone.state_dict().items()}
    model.train()
    assert not model.context.backbone.training
    ep = model(x, num_slots=2)
    (ep.log_probs.sum() + (ep.log_pi * ep.baselines.detach()).sum()).backward()
    assert all(p.grad is None for p in model.context.backbone.parameters())
    assert model.context.proj.weight.grad is not None and model.context.proj.weight.grad.abs().sum() > 0
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    after = model.context.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resnet50_context_is_frozen_in_eval_mode_and_reads_imagenet_normalised_rgb(tmp_path, monkeypatch):
    torch.manual_seed(0)
    spec = DataSpec(1, 40, 40, 11, SPEC.class_names, max_tokens=4, end_token=0)
    model = dram("model.context.kind=resnet50", spec=spec)
    model.context.data_mean, model.context.data_std = 0.5, 0.25
    x = torch.randn(2, 1, 40, 40)
    # the backbone sees the pixels (x * 0.25 + 0.5) repeated to RGB, in ImageNet normalisation
    pix = (x * 0.25 + 0.5).expand(-1, 3, -1, -1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        ref = model.context.proj(model.context.backbone((pix - mean) / std))
    torch.testing.assert_close(model.context(x), ref)
    _backbone_unchanged_by_a_training_step(model, x)

    # weights: a state_dict file, and 'imagenet' through torchvision's hub cache (no network needed when cached)
    from torchvision.models import resnet50

    ref_net = resnet50(weights=None)
    file = tmp_path / "r50.pth"
    torch.save(ref_net.state_dict(), file)
    loaded = dram("model.context.kind=resnet50", f"model.context.weights={file}", spec=spec)
    assert torch.equal(loaded.context.backbone.conv1.weight, ref_net.conv1.weight)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch/hub/checkpoints").mkdir(parents=True)
    torch.save(ref_net.state_dict(), tmp_path / "torch/hub/checkpoints/resnet50-11ad3fa6.pth")
    hub = dram("model.context.kind=resnet50", "model.context.weights=imagenet", spec=spec)
    assert torch.equal(hub.context.backbone.layer4[2].conv3.weight, ref_net.layer4[2].conv3.weight)
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="r50.pth: model.context.weights is not a readable state_dict"):
        dram("model.context.kind=resnet50", f"model.context.weights={file}", spec=spec)


@pytest.mark.parametrize("core", ["gpt2", "trxl", "gtrxl"])
def test_vit_context_is_read_by_cross_attention_from_a_learned_query(tmp_path, core):
    torch.manual_seed(0)
    spec = DataSpec(3, 30, 30, 11, SPEC.class_names, max_tokens=4, end_token=0)
    model = dram(f"model.core.kind={core}", "model.core.num_heads=2", "model.context.kind=vit",
                 f"model.context.vit_config={tiny_vit_config(tmp_path)}", "data.color=rgb", spec=spec)
    assert model.context.backbone.config.hidden_size == 24 and model.context.num_tokens == 5
    x = torch.randn(2, 3, 30, 30)
    model.eval()
    tokens = model.context(x)
    assert tokens.shape == (2, 5, 16)
    # the context step: q opens r1, its output opens r2, which reads the tokens
    h2, upper, lower = model._context_step(x)
    h1 = model.lower.forward_sequence(model.query.expand(2, 1, -1))[:, 0]
    torch.testing.assert_close(h2, model.upper.forward_sequence(h1[:, None], memory=tokens)[:, 0])
    assert upper.t == 1 and lower.t == 1
    # the first location depends on the image only through the ViT tokens
    torch.manual_seed(1)
    ep = model(x, policy="mean", num_slots=2)
    assert ep.log_probs.shape == (2, 2, 11)
    model.train()
    _backbone_unchanged_by_a_training_step(model, x)
    assert model.query.grad is not None and model.query.grad.abs().sum() > 0

    # a save_pretrained folder loads as the weights
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    loaded = dram(f"model.core.kind={core}", "model.core.num_heads=2", "model.context.kind=vit",
                  f"model.context.weights={tmp_path / 'vit'}", "data.color=rgb", spec=spec)
    assert torch.equal(loaded.context.backbone.embeddings.patch_embeddings.projection.weight,
                       vit.embeddings.patch_embeddings.projection.weight)


def test_invalid_context_combinations_are_refused_in_one_sentence():
    with pytest.raises(Exception, match="model.context.kind = 'vit' is read through cross-attention"):
        dram("model.core.kind=lstm", "model.context.kind=vit")
    with pytest.raises(Exception, match="data.normalize = 'per_image'"):
        dram("model.context.kind=resnet50", "data.normalize=per_image")
    with pytest.raises(Exception, match="model.glimpse_color = 'rgb' needs colour images"):
        dram("model.glimpse_color=rgb")
    with pytest.raises(Exception, match="model.context.weights = 'x' does not apply to model.context.kind 'cnn'"):
        dram("model.context.weights=x")


def test_rgb_glimpses_read_all_three_channels():
    spec = DataSpec(3, 30, 30, 11, SPEC.class_names, max_tokens=4, end_token=0)
    torch.manual_seed(0)
    gray = dram("data.color=rgb", spec=spec)
    rgb = dram("data.color=rgb", "model.glimpse_color=rgb", spec=spec)
    assert rgb.glimpse.convs[0].in_channels == 3 * gray.glimpse.convs[0].in_channels
    x = torch.randn(2, 3, 30, 30)
    x2 = x.clone()
    x2[:, 0] += 1.0
    x2[:, 1] -= 1.0  # the same channel mean: gray glimpses cannot tell x from x2
    for model, differs in ((gray, False), (rgb, True)):
        model.context = _Fixed(model.context(x))  # the context sees colour either way: hold it fixed
        a, b = (model(v, policy="mean", num_slots=2).log_probs for v in (x, x2))
        assert (not torch.allclose(a, b)) == differs


class _Fixed(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value.detach()

    def forward(self, images):
        return self.value


@pytest.mark.parametrize("context", ["cnn", "vit"])
def test_mc_copies_equal_repeated_images_with_the_context_run_once_per_image(tmp_path, context):
    spec = DataSpec(3, 30, 30, 11, SPEC.class_names, max_tokens=4, end_token=0)
    extra = ["model.core.kind=gtrxl", "model.core.num_heads=2", "data.color=rgb"]
    if context == "vit":
        extra += ["model.context.kind=vit", f"model.context.vit_config={tiny_vit_config(tmp_path)}"]
    torch.manual_seed(0)
    model = dram(*extra, spec=spec).eval()
    seen = []
    model.context.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    x = torch.randn(5, 3, 30, 30)
    a = model(x.repeat(3, 1, 1, 1), generator=torch.Generator().manual_seed(4), num_slots=2)
    b = model(x, generator=torch.Generator().manual_seed(4), num_slots=2, copies=3)
    assert seen == [15, 5]  # the context saw every copy the first time, each image once the second
    for field in ("log_probs", "log_pi", "baselines", "locations"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-5)


def test_ram_copies_equal_repeated_images():
    cfg = load_config(None, ["model.hidden_size=16", "model.what_size=8", "model.where_size=8"])
    torch.manual_seed(0)
    model = build_model(cfg.model, DataSpec(1, 28, 28, 10, tuple("0123456789"))).eval()
    x = torch.randn(4, 1, 28, 28)
    a = model(x.repeat(2, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    b = model(x, generator=torch.Generator().manual_seed(1), copies=2)
    torch.testing.assert_close(b.log_probs, a.log_probs)
    torch.testing.assert_close(b.locations, a.locations)
