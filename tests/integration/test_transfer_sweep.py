"""A transfer sweep through the engine on the shared local Ray, with MLflow and a report.

Three of Table 9's cells on synthetic images (Self-Tuning; +MCE, labelled images mixed among
themselves; +MCE+AS(lambda >= 0.5) with the labelled MCE) and Fine-Tuning, 15 % of the labels,
6 steps in 3 intervals, from random weights. What it proves beyond the loop's own tests: the
engine runs transfer trials, their records and MLflow tags keep the AS side and the labelled
mixing that tell Table 9's rows apart, no EMA metric is reported, and the report shows the
transfer section ranked by the best top-1.
"""

from __future__ import annotations

import pytest
from sweep_helpers import mlflow_children, run_spec, tiny_spec

pytestmark = pytest.mark.usefixtures("local_ray")


def test_a_transfer_sweep_records_reports_and_tracks_its_trials(tmp_path):
    spec = tiny_spec(
        "tl-it",
        grid={
            "labels": {"synthetic": [0.15]},
            "algorithm": ["fine_tuning", "self_tuning"],
            "method": ["vanilla", "mixup"],
            "loss": ["ce", "mce"],
            "as_side": ["labelled_minor", "labelled_major", "none"],
        },
        recipe="transfer",
        recipe_overrides={"pretrained_init": False},
        epochs=None,
        batch_size=8,
        semi_supervised={"steps": 6, "eval_every": 2},
        exclude=[
            {"method": "vanilla", "loss": "mce"},
            {"method": "mixup", "loss": "ce"},
            {"method": "vanilla", "as_side": ["labelled_major", "none"]},
            {"algorithm": "fine_tuning", "method": "mixup"},
            {"method": "mixup", "as_side": "labelled_minor"},
        ],
        overrides=[
            {
                "match": {"as_side": "labelled_major"},
                "set": {"transfer": {"labelled_mixup": "mce"}},
            }
        ],
    )
    spec.pop("epochs")
    outcome = run_spec(spec, tmp_path)
    assert outcome.exit_code == 0 and outcome.counts["succeeded"] == 4
    records = {r.cell: r.to_row() for r in outcome.folder.records()}
    prefix = "synthetic@0.15/smallnet/"
    assert set(records) == {
        prefix + "fine_tuning/vanilla/ce",
        prefix + "self_tuning/vanilla/ce",
        prefix + "self_tuning/mixup/mce/as_none",
        prefix + "self_tuning/mixup/mce/as_labelled_major",
    }
    major = records[prefix + "self_tuning/mixup/mce/as_labelled_major"]
    assert (major["as_side"], major["labelled_mixup"]) == ("labelled_major", "mce")
    assert records[prefix + "self_tuning/mixup/mce/as_none"]["as_side"] == "none"
    for cell, row in records.items():
        assert (row["epochs"], row["epoch"], row["step"]) == (3, 3, 6), cell
        assert row["top1_best"] >= row["val_top1"] and "top1_ema_best" not in row, cell

    _, _, children = mlflow_children(outcome.folder.path)
    tags = {c.data.tags["cell"]: c.data.tags for c in children}
    assert tags[prefix + "self_tuning/mixup/mce/as_labelled_major"]["as_side"] == "labelled_major"
    assert tags[prefix + "self_tuning/mixup/mce/as_labelled_major"]["labelled_mixup"] == "mce"
    assert "as_side" not in tags[prefix + "fine_tuning/vanilla/ce"]

    markdown = outcome.outputs["markdown"].read_text()
    assert "## Transfer learning: top1_best" in markdown
    assert "| Self-Tuning |" in markdown and "| Fine-Tuning |" in markdown
