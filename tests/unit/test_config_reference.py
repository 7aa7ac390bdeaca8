"""docs/configuration.md is the schema, written out: current, complete, and every key explained."""

from __future__ import annotations

from attn.config import ExperimentConfig, load_config
from attn.config_reference import DOC_PATH, render


def test_the_reference_in_docs_is_current():
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md differs from the schema: run python -m attn.config_reference"
    )


def _table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in render().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_key_of_every_shipped_experiment_has_a_described_row(repo_root):
    """Each leaf key of every shipped experiment, resolved (so every task, model, core and context
    they use), is a row with a description; and every row is described."""
    rows = _table_rows()

    def leaves(prefix, value):
        if isinstance(value, dict) and not prefix.endswith((".space", ".when")):
            for key, inner in value.items():
                yield from leaves(f"{prefix}.{key}" if prefix else key, inner)
        else:
            yield prefix

    keys = set()
    for path in sorted((repo_root / "experiments").glob("*.yaml")):
        dumped = load_config(path).model_dump(by_alias=True)
        keys |= {k for k in leaves("", dumped) if not k.startswith("sweep.space") and k != "sweep"}
    assert len(keys) > 100 and len(rows) > 110
    missing = sorted(k for k in keys if k not in rows)
    assert not missing, missing
    undescribed = [k for k, cells in rows.items() if not cells[-1]]
    assert not undescribed, undescribed


def test_defaults_in_the_reference_are_the_schema_defaults():
    rows = _table_rows()
    cfg = ExperimentConfig()
    assert rows["train.lr"][2] == f"`{cfg.train.lr}`"
    assert rows["model.core.kind"][2] == "`rnn for ram, lstm for dram`"
    assert rows["model.core.gate_bias"][2] == "`2.0`" and rows["data.clutter_size"][3] == ">= 1, <= 28"
    assert rows["data.use_extra"][2] == "true"
    assert rows["sweep.space"][2] == "required"
    assert rows["data.val_fraction"][3] == ">= 0.0, < 1.0"
