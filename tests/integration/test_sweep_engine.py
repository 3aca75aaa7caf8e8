"""The engine on a real local Ray with a real MLflow store: the smoke grid, a failing trial."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.request

import pytest
from mlflow import MlflowClient
from sweep_helpers import DMSWEEP, run_spec, tiny_spec

from service.results.folder import find_sweep
from service.results.results_file import read_results
from tests.support import REPO
from tests.support.ports import free_port
from tests.support.processes import end_session, start_session

pytestmark = pytest.mark.usefixtures("local_ray")

CELL_TAGS = ("dataset", "backbone", "method", "loss", "seed")


def runs_of(outcome):
    tracking = outcome.folder.read_state().tracking
    client = MlflowClient(tracking_uri=tracking["uri"])
    experiment_id = tracking["experiment_id"]
    parent_id = tracking["parent_run_id"]
    runs = client.search_runs([experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    parent = [r for r in runs if r.info.run_id == parent_id]
    return client, parent, children


def test_the_smoke_grid_runs_every_trial_once(smoke_sweep):
    outcome = smoke_sweep
    assert outcome.exit_code == 0
    assert outcome.counts["succeeded"] == 4 and outcome.counts["failed"] == 0
    records = [r.to_row() for r in outcome.folder.records()]  # as stored
    cells = {(r["method"], r["loss"]) for r in records}
    assert cells == {(m, loss) for m in ("mixup", "cutmix") for loss in ("mce", "dm_ce")}
    # The sweep id is <name>-<UTC timestamp>; its folder is found by id and by path.
    assert outcome.folder.sweep_id.startswith("smoke-it-20")
    assert find_sweep(str(outcome.folder.path)).path == outcome.folder.path
    for record in records:
        assert record["epoch"] == 2 and 0 <= record["val_top1"] <= 100
        # The paper's metric: the median of the last 10 epochs of 2 is their mean.
        assert not math.isnan(record["top1_median_last10"])
        assert record["top1_best"] >= record["val_top1"]
        # DM(CE) cells carry the paper's eta, the static-policy default (appendix A.3).
        if record["loss"] == "dm_ce":
            assert record["hp.eta"] == 0.1 and record["hp.alpha"] == 0.2


def test_the_report_holds_every_trial(smoke_sweep):
    outputs = smoke_sweep.outputs
    rows = read_results(outputs["results"])
    assert sorted(r["trial_id"] for r in rows) == sorted(
        r.trial_id for r in smoke_sweep.folder.records()
    )
    markdown = outputs["markdown"].read_text()
    for method in ("mixup", "cutmix"):
        assert method in markdown
    assert "dm_ce - mce" in markdown
    assert outputs["chart"].stat().st_size > 1000


def test_mlflow_has_a_parent_run_and_one_nested_child_per_trial(smoke_sweep):
    client, parent, children = runs_of(smoke_sweep)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].info.run_name == smoke_sweep.folder.sweep_id
    assert parent[0].data.metrics["trials_succeeded"] == 4
    parent_artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "report")}
    assert {"report/results.parquet", "report/report.md"} <= parent_artifacts

    records = {r.trial_id: r.to_row() for r in smoke_sweep.folder.records()}
    assert len(children) == len(records) == 4
    for run in children:
        tags, record = run.data.tags, records[run.data.tags["dmsweep.trial_id"]]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"synthetic/smallnet/{tags['method']}/{tags['loss']}/seed0"
        assert [tags[k] for k in CELL_TAGS] == [str(record[k]) for k in CELL_TAGS]
        assert tags["git_commit"] and tags["dmsweep.version.torch"]
        assert tags["dmsweep.cpu_count"] and "dmsweep.gpu" in tags
        params = run.data.params
        assert params["loss.name"] == record["loss"]
        assert params["resolved_recipe.lr"] and params["data.synthetic_images.train"] == "256"
        history = client.get_metric_history(run.info.run_id, "val_top1")
        assert sorted(m.step for m in history) == [1, 2]
        assert run.data.metrics["val_top1"] == pytest.approx(record["val_top1"])
        assert run.data.metrics["top1_median_last10"] == pytest.approx(record["top1_median_last10"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"learning_curve.png", "trial.yaml", "checkpoint"} <= artifacts
        assert "checkpoint/state.pt" in {
            a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")
        }


def test_a_failing_trial_is_recorded_and_the_rest_go_on(tmp_path):
    # A learning rate of 1e12 turns the loss into NaN in the first epoch of one cell only.
    spec = tiny_spec(
        "failing",
        grid={"method": ["mixup"], "loss": ["mce", "dm_ce"]},
        epochs=1,
        overrides=[{"match": {"loss": "dm_ce"}, "set": {"recipe_overrides": {"lr": 1e12}}}],
    )
    outcome = run_spec(spec, tmp_path)
    assert outcome.exit_code == 1
    assert outcome.counts["succeeded"] == 1 and outcome.counts["failed"] == 1
    failed = next(r.to_row() for r in outcome.folder.records() if r.status == "failed")
    assert failed["loss"] == "dm_ce"
    assert "NonFiniteLossError" in failed["error"] and "training loss became" in failed["error"]
    assert failed["deterministic"] is True
    assert "Traceback" in failed["traceback"]
    # Not retried: a NaN would come back on every restart.
    log = outcome.folder.log_file(failed["trial_id"]).read_text()
    assert log.count("start: worker") == 1
    _, _, children = runs_of(outcome)
    statuses = {r.data.tags["loss"]: r.info.status for r in children}
    assert statuses == {"mce": "FINISHED", "dm_ce": "FAILED"}
    failed_run = next(r for r in children if r.data.tags["loss"] == "dm_ce")
    assert "training loss became" in failed_run.data.tags["dmsweep.error"]
    # The report is still written, with the failure counted.
    assert "1 failed" in outcome.outputs["markdown"].read_text()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DMSWEEP, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)},
    )


def test_logs_and_report_read_a_sweep_folder(smoke_sweep):
    folder = smoke_sweep.folder
    listing = cli("logs", str(folder.path))
    assert listing.returncode == 0, listing.stderr
    records = [r.to_row() for r in folder.records()]
    for record in records:
        assert record["trial_id"] in listing.stdout and record["name"] in listing.stdout
    one = records[0]
    log = cli("logs", str(folder.path), one["trial_id"])
    assert log.returncode == 0
    assert "epoch 1:" in log.stdout and "epoch 2:" in log.stdout and "finished" in log.stdout
    # By name too, and by id under --storage-path.
    by_name = cli("logs", folder.sweep_id, one["name"], "--storage-path", str(folder.path.parent))
    assert by_name.returncode == 0 and by_name.stdout == log.stdout
    report = cli("report", str(folder.path))
    assert report.returncode == 0
    assert "mixup" in report.stdout and "dm_ce - mce" in report.stdout
    assert (folder.path / "report.md").is_file()


def test_ui_serves_the_local_store(smoke_sweep, tmp_path):
    port = free_port()
    storage = smoke_sweep.folder.path.parent
    server = start_session(
        [*DMSWEEP, "ui", "--storage-path", str(storage), "--port", str(port)],
        tmp_path / "ui.log",
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "ui.log").read_text()
                assert time.monotonic() < deadline, "the MLflow UI did not come up"
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke-it"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.load(response)["experiment"]["name"] == "smoke-it"
    finally:
        end_session(server.pid)
