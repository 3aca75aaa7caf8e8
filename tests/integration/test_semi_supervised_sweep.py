"""A semi-supervised sweep through the engine on the shared local Ray, with MLflow and a report.

Three cells of Table 7's shape on synthetic images: the labelled images alone, FixMatch and
FixMatch+DM, 50 labels, 6 steps in 3 intervals. What it proves beyond the loop's own tests: the
engine runs step-based trials whose "epochs" are intervals, their records keep the algorithm and
the labels, MLflow has the per-interval SSL metrics, and the report shows the semi-supervised
table (not the supervised pivot) with the DM gain over FixMatch.
"""

from __future__ import annotations

import pytest
from sweep_helpers import mlflow_children, run_spec, tiny_spec

pytestmark = pytest.mark.usefixtures("local_ray")


def test_a_semi_supervised_sweep_records_reports_and_tracks_its_trials(tmp_path):
    spec = tiny_spec(
        "ssl-it",
        grid={
            "labels": {"synthetic": [50]},
            "algorithm": ["labelled_only", "fixmatch"],
            "method": ["vanilla", "mixup"],
            "loss": ["ce", "dm_ce"],
        },
        recipe="ssl",
        epochs=None,
        batch_size=8,
        semi_supervised={"steps": 6, "eval_every": 2, "unlabelled_ratio": 2},
        exclude=[
            {"method": "vanilla", "loss": "dm_ce"},
            {"method": "mixup", "loss": "ce"},
            {"algorithm": "labelled_only", "method": "mixup"},
        ],
    )
    spec.pop("epochs")
    outcome = run_spec(spec, tmp_path)
    assert outcome.exit_code == 0 and outcome.counts["succeeded"] == 3
    records = {r.cell: r.to_row() for r in outcome.folder.records()}
    assert set(records) == {
        "synthetic@50/smallnet/labelled_only/vanilla/ce",
        "synthetic@50/smallnet/fixmatch/vanilla/ce",
        "synthetic@50/smallnet/fixmatch/mixup/dm_ce",
    }
    for cell, row in records.items():
        assert (row["labels"], row["epochs"], row["epoch"], row["step"]) == (50, 3, 3, 6), cell
        assert row["top1_ema_best"] >= row["val_top1_ema"]
        assert row["algorithm"] == cell.split("/")[2]
    assert 0 <= records["synthetic@50/smallnet/fixmatch/mixup/dm_ce"]["mask_rate"] <= 1

    _, _, children = mlflow_children(outcome.folder.path)
    fixmatch = [c for c in children if c.data.tags.get("algorithm") == "fixmatch"]
    assert len(children) == 3 and len(fixmatch) == 2
    for child in fixmatch:
        assert child.data.tags["labels"] == "50"
        assert "mask_rate" in child.data.metrics and "val_top1_ema" in child.data.metrics

    markdown = outcome.outputs["markdown"].read_text()
    assert "## Semi-supervised: top1_ema_best" in markdown
    assert "| FixMatch+DM |" in markdown and "| labelled only |" in markdown
    assert "FixMatch+DM - FixMatch" in markdown
