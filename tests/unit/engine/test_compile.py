"""train.compile: the training step of every core is captured by TorchDynamo as one graph
(``fullgraph=True``: a graph break is an error), once (the next step reuses the graph), and, run
through the captured graph, gives the eager step's loss and gradients. The "eager" backend replays the captured operations without generating
code, so these tests check the capture, not the compiler; tests/e2e/test_compiled_training.py trains
with the real compiler. RAM's rnn core is captured through the generic loop (its hand-written
episode is bypassed while compiling) and still matches the hand-written episode's gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from attn.config import load_config
from attn.data import BatchLoader, build_data
from attn.engine.compile import compile_training
from attn.engine.objective import objective_for
from attn.engine.passes import batch_loss
from attn.engine.precision import Precision
from attn.models import build_model
from helpers.cli import ROOT
from helpers.svhn_fixture import make_svhn_folder

CPU = torch.device("cpu")
RAM_SMALL = ["data.train_subset=16", "data.eval_subset=8", "train.batch_size=8", "model.hidden_size=32",
             "model.num_glimpses=3"]


@pytest.fixture(scope="module")
def svhn_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("svhn")
    make_svhn_folder(data, "train", 16, seed=0)
    make_svhn_folder(data, "test", 8, seed=1)
    return data


def _dram(svhn_dir, core: str) -> list[str]:
    return [f"data.data_dir={svhn_dir}", "data.use_extra=false", "data.train_subset=16", "data.eval_subset=8",
            f"data.cache_dir={svhn_dir / 'cache'}", "train.batch_size=8", f"model.core.kind={core}",
            "model.hidden_size=32", "model.conv_channels=[4,4,8]", "model.explore_steps=0",
            "model.glimpses_per_digit=1"]


CASES = {
    "ram-rnn": ("mnist_ram.yaml", RAM_SMALL),
    "ram-lstm": ("mnist_ram.yaml", RAM_SMALL + ["model.core.kind=lstm"]),
    "ram-gpt2": ("mnist_gpt2.yaml", RAM_SMALL),
    "ram-gpt2-two-phase": ("mnist_gpt2.yaml", RAM_SMALL + ["model.core.rollout=two_phase"]),
    # the file's dropout off: compiled code draws other dropout masks than eager code, so the gradients
    # could not be compared
    "ram-trxl": ("mnist_trxl.yaml", RAM_SMALL + ["model.core.dropout=0.0"]),
    "ram-gtrxl": ("mnist_gtrxl.yaml", RAM_SMALL),
    "dram-lstm": ("svhn_dram.yaml", "lstm"),
    "dram-gtrxl": ("svhn_dram.yaml", "gtrxl"),
}


def _step(model: nn.Module, forward: nn.Module, data, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step's loss through ``forward`` (the model or its compiled form) and the gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same l_0 and policy noise in both
    terms, _ = batch_loss(forward, data, objective_for(data.spec), batch, rl_coef=0.01, device=CPU,
                          precision=Precision("fp32"), all_slots=True)
    terms.total.backward()
    return float(terms.total.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_the_training_step_of_every_core_is_one_graph_with_the_eager_gradients(case, svhn_dir):
    experiment, overrides = CASES[case]
    if experiment == "svhn_dram.yaml":
        overrides = _dram(svhn_dir, overrides)
    cfg = load_config(ROOT / "experiments" / experiment, overrides)
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.spec, (data.mean, data.std))
    model.train()
    batch = next(iter(BatchLoader(data.train, 8, shuffle=True, seed=0)))
    compiled = compile_training(model, "default", CPU, print, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    counters.clear()
    loss, grads = _step(model, compiled, data, batch)  # first, as in a run: no eager step filled caches
    _step(model, compiled, data, batch)
    # captured (not skipped), and once: the second step is not traced again
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    eager_loss, eager_grads = _step(model, model, data, batch)
    assert loss == pytest.approx(eager_loss, rel=1e-6)
    assert grads.keys() == eager_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, eager_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_graph_break_in_the_step_is_an_error():
    """The capture check itself: a step that reads a device value on the host cannot be one graph."""
    class Reads(nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x

    with pytest.raises(Exception, match="(?i)graph break|data-dependent|Unsupported"):
        compile_training(Reads(), "default", CPU, print, backend="eager", fullgraph=True)(torch.ones(3))


def test_off_is_the_model_itself_and_cuda_graphs_on_a_cpu_say_so():
    model, lines = nn.Linear(2, 2), []
    assert compile_training(model, "off", CPU, lines.append) is model and not lines
    compiled = compile_training(model, "reduce-overhead", CPU, lines.append)
    assert compiled is not model and lines == [
        "train.compile=reduce-overhead: CUDA graphs need a GPU; on the CPU the step compiles as default"]
    assert list(compiled.parameters()) == list(model.parameters())
