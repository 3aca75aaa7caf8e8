"""The HTML report in a browser: one sweep folder's page, opened by headless Chromium.

The folder is made by hand as a sweep leaves it: trial records, each trial's log written by the
worker's own functions, ``sweep.json`` naming an MLflow store (SQLite, real) that holds the
sweep's parent run and a child run per trial. The page must render, fetch nothing, and show what
the folder holds: the gains with the paper's beside (hand-computed), the gains chart with its
bars and error bars, one learning-curve panel with a curve and a ± std band per cell, every
metric (EMA ones included) and a link per trial to its MLflow run.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from playwright.sync_api import expect

from service.results.folder import SweepFolder
from service.results.links import LOCAL_UI, PARENT_TAG, TRIAL_ID_TAG
from service.results.records import SweepInfo, SweepStatus, TrialRecord, TrialState
from service.results.report import write_sweep_report
from service.spec.model import SweepSpec
from service.sweep.worker import _epoch_line, append_log
from tests.support.browser import headless_chromium

# (loss, alpha, control, final top-1 of seeds 0 and 1): Mixup's baseline at its alpha 1, DM(CE)
# at 0.2 and the control (MCE at 0.2). Hand-computed: baseline 51 ± 1.41, DM 54.5 ± 0.71,
# control 53 ± 0; DM - baseline +3.50 ± sqrt(2 + 0.5) = 1.58, DM - control +1.50 ± 0.71.
CELLS = [
    ("mce", 1.0, False, (50.0, 52.0)),
    ("dm_ce", 0.2, False, (54.0, 55.0)),
    ("mce", 0.2, True, (53.0, 53.0)),
]
EPOCHS = 3


def make_sweep(root: Path) -> tuple[SweepFolder, list[TrialRecord], str, dict[str, str]]:
    """The folder, its records, its MLflow experiment and each trial's run id there."""
    folder = SweepFolder(root / "page-sweep")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("page", artifact_location=(root / "art").as_uri())
    parent = client.create_run(experiment, run_name=folder.sweep_id).info.run_id
    records, runs = [], {}
    for index, (loss, alpha, control, finals) in enumerate(CELLS):
        cell = f"cifar100/resnet18_cifar/mixup/{loss}" + ("/control" if control else "")
        for seed, final in enumerate(finals):
            trial_id = f"t{index}{seed}"
            for epoch in range(1, EPOCHS + 1):
                top1 = final * epoch / EPOCHS
                append_log(
                    folder.log_file(trial_id), _epoch_line({"epoch": epoch, "val_top1": top1})
                )
            records.append(
                TrialRecord(
                    trial_id=trial_id,
                    name=f"{cell}/seed{seed}",
                    cell=cell,
                    dataset="cifar100",
                    backbone="resnet18_cifar",
                    method="mixup",
                    loss=loss,
                    seed=seed,
                    status=TrialState.SUCCEEDED,
                    recipe="cifar",
                    epochs=EPOCHS,
                    comparable=False,
                    lambda_mode="batch",
                    hyperparameters={"alpha": alpha},
                    metrics={
                        "val_top1": final,
                        "top1_best": final,
                        "top1_median_last10": final * 2 / 3,
                        "mixed_top1": 40.0,
                        "mixed_top2": 20.0,
                        "val_top1_ema": final - 1,
                        "top1_ema_best": final - 1,
                    },
                )
            )
            run = client.create_run(experiment, tags={PARENT_TAG: parent, TRIAL_ID_TAG: trial_id})
            runs[trial_id] = run.info.run_id
    for record in records:
        folder.write_record(record)
    tracking = {
        "uri": client.tracking_uri,
        "experiment_id": experiment,
        "parent_run_id": parent,
        "sweep_id": folder.sweep_id,
    }
    folder.write_state(SweepInfo(folder.sweep_id, "page", SweepStatus.SUCCEEDED, tracking))
    return folder, records, experiment, runs


def test_the_report_page_renders_in_chromium(tmp_path: Path) -> None:
    folder, records, experiment_id, runs = make_sweep(tmp_path)
    spec = SweepSpec.model_validate(
        {
            "name": "page",
            "grid": {
                "dataset": ["synthetic"],
                "backbone": ["smallnet"],
                "method": ["mixup"],
                "loss": ["mce", "dm_ce"],
            },
        }
    )
    page_file = write_sweep_report(folder, spec, records)["html"]

    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(page_file.as_uri(), wait_until="load")
        assert requested == [page_file.as_uri()]  # nothing fetched: one self-contained file

        # The gains, hand-computed, with the paper's (Table 1: 80.24 - 79.12) beside the first.
        gains = page.locator("#gains-table tr").nth(1).locator("td")
        assert gains.all_inner_texts() == [
            "cifar100",
            "resnet18_cifar",
            "mixup",
            "dm_ce - mce",
            "+3.50 ± 1.58",
            "+1.12 (not comparable)",
            "+1.50 ± 0.71",
            "1 / 0.2 / 0.2",
        ]
        # The chart: a bar per gain, each with its error bar, drawn with a size.
        chart = page.locator("#gains-chart svg")
        expect(chart).to_be_visible()
        for part in ("gain-base-", "gain-control-", "gain-errors-base-", "gain-errors-control-"):
            drawn = chart.locator(f"[id^='{part}']")
            expect(drawn).to_have_count(1)
            box = drawn.bounding_box()
            assert box is not None and box["height"] > 0, part

        # One panel (mixup) with each cell's mean curve through every epoch and its ± std band
        # (the control's seeds agree: a band of zero height, still drawn).
        panels = page.locator("#curves .curve-panel")
        expect(panels).to_have_count(1)
        for loss, _, control, _ in CELLS:
            slug = f"cifar100__resnet18_cifar__mixup__{loss}" + ("__control" if control else "")
            line = panels.locator(f"[id='curve-{slug}'] > path")  # the line; then its markers
            expect(line).to_have_count(1)
            assert (line.get_attribute("d") or "").count("L") == EPOCHS - 1, slug
            expect(panels.locator(f"[id='curve-{slug}'] use")).to_have_count(EPOCHS)
            expect(panels.locator(f"[id='band-{slug}']")).to_have_count(1)

        # Every metric, EMA ones included, and the note on which one meets the paper.
        header = page.locator("#metrics-table th").all_inner_texts()
        assert header[3:] == [
            "final top-1",
            "best top-1",
            "median top-1, last 10 epochs",
            "mixed top-1",
            "mixed top-2",
            "EMA final top-1",
            "EMA best top-1",
        ]
        expect(page.get_by_text("compares the raw model with the paper")).to_be_visible()

        # A link per trial, to the run MLflow holds for that trial.
        links = page.locator("#trials-table a.mlflow-run")
        expect(links).to_have_count(len(records))
        hrefs = sorted(links.evaluate_all("links => links.map(a => a.href)"))
        expected = sorted(
            f"{LOCAL_UI}/#/experiments/{experiment_id}/runs/{run_id}" for run_id in runs.values()
        )
        assert hrefs == expected
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
