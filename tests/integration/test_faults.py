"""Faults with real Ray processes: a killed training worker, a lost node, storage that fails.

Nothing is mocked: a worker process is SIGKILLed, a node of a ``ray.cluster_utils.Cluster`` is
removed as in a crash, and storage is broken on disk, with a regular file where a folder must
be (``Not a directory`` / ``File exists`` hold for root too, unlike permissions).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from sweep_helpers import end_session, run_spec, start_session, tiny_spec, write_spec

from service.engine import create_sweep, execute
from service.spec import spec_from_dict

SCRIPT = Path(__file__).with_name("fault_cluster.py")
EPOCHS = 4
# Epochs of ~1.5 s on 2 cores: a fault lands between two checkpoints, far from a trial's end.
DATA = {
    "synthetic": {
        "num_classes": 4,
        "image_size": 32,
        "synthetic_images": {"train": 1024, "test": 128},
    }
}
WORKER_START = re.compile(r"start: worker on node \w+, pid (\d+)")

pytestmark = pytest.mark.disturbs_shared_ray


def fault_spec(name: str, losses: list[str], **changes) -> dict:
    return tiny_spec(
        name,
        grid={"method": ["mixup"], "loss": losses},
        epochs=EPOCHS,
        checkpoint_every=1,
        data=DATA,
        **changes,
    )


def trial_logs(folder: Path) -> dict[str, str]:
    logs = folder / "logs"
    return {p.stem: p.read_text() for p in logs.glob("*.log")} if logs.is_dir() else {}


def epochs_in(log: str) -> list[int]:
    return [int(e) for e in re.findall(r"epoch (\d+):", log)]


class Watcher(threading.Thread):
    """Beside a sweep run by this process: once ``ready(folder)`` finds something, ``act`` on it."""

    def __init__(self, storage: Path, ready, act, timeout_s: float = 400) -> None:
        super().__init__(daemon=True)
        self.storage, self.ready, self.act, self.timeout_s = storage, ready, act, timeout_s
        self.acted_on = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while time.monotonic() < deadline:
                folders = [p for p in self.storage.glob("*-20*") if (p / "sweep.json").is_file()]
                found = self.ready(folders[0]) if folders else None
                if found:
                    self.act(folders[0], found)
                    self.acted_on = found
                    return
                time.sleep(0.05)
            raise AssertionError(f"nothing to act on within {self.timeout_s} s")
        except BaseException as error:  # the test reports it
            self.error = error

    def result(self):
        self.join(timeout=30)
        assert self.error is None, self.error
        assert self.acted_on is not None, "the watcher never acted"
        return self.acted_on


def mlflow_children(folder: Path):
    state = json.loads((folder / "sweep.json").read_text())["tracking"]
    client = MlflowClient(tracking_uri=state["uri"])
    runs = client.search_runs([state["experiment_id"]], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]]
    return client, client.get_run(state["parent_run_id"]), children


def tune_results(folder: Path, trial_id: str) -> list[dict]:
    """Every result Tune received from a trial: its ``result.json``, one line per report."""
    found = list(folder.glob(f"*{trial_id}*/result.json"))
    assert len(found) == 1, found
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]


def records_in(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "trials").glob("*.json"))]


def steps(client: MlflowClient, run_id: str, metric: str) -> dict[int, list[float]]:
    history = defaultdict(list)
    for m in client.get_metric_history(run_id, metric):
        history[m.step].append(m.value)
    return dict(history)


@pytest.mark.usefixtures("local_ray")
def test_a_killed_worker_resumes_from_its_checkpoint_and_is_recorded_once(tmp_path):
    """The training worker of a one-trial sweep is SIGKILLed after its second epoch."""

    def trained_two_epochs(folder: Path):
        # "epoch 2:" is logged once epoch 1's report, with its checkpoint, was taken (the loop
        # goes on only when Ray Train has it).
        for trial_id, log in trial_logs(folder).items():
            pids = WORKER_START.findall(log)
            if pids and "epoch 2:" in log:
                return trial_id, int(pids[0])
        return None

    watcher = Watcher(
        tmp_path, trained_two_epochs, lambda _, found: os.kill(found[1], signal.SIGKILL)
    )
    watcher.start()
    outcome = run_spec(fault_spec("kill-worker", ["mce"]), tmp_path)
    trial_id, killed = watcher.result()

    assert outcome.exit_code == 0 and outcome.counts["succeeded"] == 1
    [record] = outcome.folder.records()
    assert record["trial_id"] == trial_id and record["status"] == "succeeded"
    assert record["epoch"] == EPOCHS

    # Ray Train restarted the worker group from the last checkpoint, in a new process.
    log = outcome.folder.log_file(trial_id).read_text()
    assert log.count("start: worker") == 1 and log.count("resume from") == 1, log
    before, after = log.split("resume from")
    assert re.search(r"worker on node \w+, pid (\d+)", after).group(1) != str(killed)
    assert epochs_in(before)[:2] == [1, 2]
    resumed = epochs_in(after)
    # Not from epoch 0: at least epoch 1's checkpoint was taken before the kill.
    assert resumed[0] >= 2 and resumed == list(range(resumed[0], EPOCHS + 1)), log
    assert log.count("finished") == 1
    # Epochs trained again after the restart: those after the checkpoint it resumed from.
    again = set(epochs_in(before)) & set(resumed)
    assert again <= {2, 3}

    # Tune saw each epoch once (a report lost with the worker never reached it), and one final
    # result, the record's.
    rows = tune_results(outcome.folder.path, trial_id)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    finals = [r for r in rows if "top1_best" in r]
    assert len(finals) == 1 and finals[0]["top1_best"] == record["top1_best"]

    # MLflow: one child run, finished, with one value per epoch, except an epoch trained again
    # after the restart, which may carry a second value: the same one (the resumed run is the
    # same run, bitwise, on CPU). The summary metrics are logged once.
    client, parent, children = mlflow_children(outcome.folder.path)
    assert len(children) == 1 and parent.info.status == "FINISHED"
    run = children[0]
    assert run.data.tags["dmsweep.trial_id"] == trial_id and run.info.status == "FINISHED"
    for metric in ("val_top1", "train_loss"):
        history = steps(client, run.info.run_id, metric)
        assert set(history) == set(range(1, EPOCHS + 1)), history
        for epoch, values in history.items():
            assert len(values) == 1 or (epoch in again and len(values) == 2), history
            assert len(set(values)) == 1, history
    for metric in ("top1_best", "top1_median_last10"):
        assert steps(client, run.info.run_id, metric) == {EPOCHS: [record[metric]]}
    assert run.data.metrics["val_top1"] == record["val_top1"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "learning_curve.png", "trial.yaml"} <= artifacts


def test_a_lost_node_reschedules_its_trials_and_each_finishes_once(tmp_path):
    """Two 1-CPU nodes with a trial slot each: each holds one trial's driver and one trial's
    worker. The second node is removed as in a crash (``fault_cluster.py``): a lost worker is
    restarted by Ray Train, a lost driver by Tune, both on the head, from their checkpoints."""
    spec = write_spec(tmp_path, fault_spec("lost-node", ["mce", "dm_ce"]))
    log_file = tmp_path / "cluster.log"
    process = start_session(
        [sys.executable, str(SCRIPT), str(spec), str(tmp_path / "runs")],
        log_file,
        env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    )
    try:
        rc = process.wait(timeout=480)
    finally:
        end_session(process.pid)
    output = log_file.read_text()
    assert rc == 0, output
    outcome = json.loads(next(x for x in reversed(output.splitlines()) if x.startswith("{")))
    assert "removed_at" in outcome["remover"], outcome
    head, removed = outcome["head"], outcome["removed"]
    folder = Path(outcome["folder"])

    assert outcome["exit_code"] == 0
    records = {r["trial_id"]: r for r in records_in(folder)}
    assert len(records) == 2
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert {r["epoch"] for r in records.values()} == {EPOCHS}
    assert outcome["tune_trials"] == dict.fromkeys(records, "TERMINATED")

    logs = trial_logs(folder)
    lost_driver = [t for t, log in logs.items() if f"driver on node {removed}" in log]
    lost_worker = [t for t, log in logs.items() if f"worker on node {removed}" in log]
    assert len(lost_driver) == 1 and len(lost_worker) == 1, logs
    for trial_id in {*lost_driver, *lost_worker}:
        log = logs[trial_id]
        # Everything it had on the lost node came back on the head, from its checkpoint.
        assert log.count("resume from") == 1, log
        after = log.split("resume from")[1]
        assert f"worker on node {head}" in after.splitlines()[0], log
        assert epochs_in(after)[0] >= 2 and epochs_in(after)[-1] == EPOCHS, log
    # The trial whose driver was lost was retried by Tune, on the head.
    driver_lines = re.findall(r"driver on node (\w+)", logs[lost_driver[0]])
    assert driver_lines == [removed, head], logs[lost_driver[0]]
    for trial_id, log in logs.items():
        assert log.count("finished") == 1, log
        # Tune has no epoch twice and one final result. (A lost driver takes with it the
        # epochs it had not passed on yet: Tune's history of that trial may miss some.)
        epochs = [r["epoch"] for r in tune_results(folder, trial_id)]
        assert epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS, epochs
        assert sum("top1_best" in r for r in tune_results(folder, trial_id)) == 1

    _, parent, children = mlflow_children(folder)
    assert sorted(r.data.tags["dmsweep.trial_id"] for r in children) == sorted(records)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"


@pytest.mark.usefixtures("local_ray")
def test_storage_that_fails_names_its_path_and_spares_the_other_trials(tmp_path):
    """The artifact store of the sweep breaks after it started, and one trial's checkpoint
    folder is replaced by a file mid-trial: that trial fails naming its folder, the other
    trains to its end; every artifact that could not be stored is named with its path."""
    spec = fault_spec("storage", ["mce", "dm_ce"])
    folder = create_sweep(spec_from_dict(spec), yaml.safe_dump(spec), storage_path=tmp_path)
    artifact_root = tmp_path / "mlartifacts" / "storage"
    artifact_root.rename(tmp_path / "artifacts-before")
    artifact_root.write_text("a file where the artifact store's folder was\n")

    def training(sweep: Path):
        for trial_id, log in trial_logs(sweep).items():
            if "epoch 1:" in log:
                return trial_id
        return None

    def block_checkpoints(sweep: Path, trial_id: str) -> None:
        checkpoints = sweep / "train" / trial_id
        checkpoints.rename(sweep / "train" / f"{trial_id}-before")
        checkpoints.write_text("a file where the trial's checkpoint folder was\n")

    watcher = Watcher(tmp_path, training, block_checkpoints)
    watcher.start()
    outcome = execute(folder)
    blocked = watcher.result()

    assert outcome.exit_code == 1 and not outcome.interrupted
    assert outcome.counts["failed"] == 1 and outcome.counts["succeeded"] == 1
    records = {r["trial_id"]: r for r in folder.records()}
    [other] = [t for t in records if t != blocked]

    # The blocked trial failed with an error naming its checkpoint folder and the problem.
    failed = records[blocked]
    checkpoints = str(folder.train_dir / blocked)
    assert failed["status"] == "failed"
    assert checkpoints in failed["error"], failed["error"]
    assert re.search(r"File exists|Not a directory", failed["error"]), failed["error"]
    assert checkpoints in folder.log_file(blocked).read_text()

    # The other trained to its end, once, and recorded its result; each artifact it could not
    # store is named in its log with the path and the problem.
    done = records[other]
    assert done["status"] == "succeeded" and done["epoch"] == EPOCHS
    assert done["val_top1"] >= 0 and done["top1_best"] >= done["val_top1"]
    log = folder.log_file(other).read_text()
    assert log.count("start: worker") == 1 and "ended by" not in log, log
    for artifact in ("trial.yaml", "checkpoint", "learning_curve.png"):
        line = next(x for x in log.splitlines() if f"artifact {artifact} was not stored" in x)
        assert "Not a directory" in line and str(artifact_root) in line, line

    # MLflow keeps the metrics (its store is not the artifact store) and says what is missing.
    client, parent, children = mlflow_children(folder.path)
    runs = {r.data.tags["dmsweep.trial_id"]: r for r in children}
    assert runs[other].info.status == "FINISHED"
    assert sorted(steps(client, runs[other].info.run_id, "val_top1")) == [*range(1, EPOCHS + 1)]
    assert str(artifact_root) in runs[other].data.tags["dmsweep.artifact_error.checkpoint"]
    assert runs[blocked].info.status == "FAILED"
    assert checkpoints in runs[blocked].data.tags["dmsweep.error"]
    # The sweep's report is on disk, and the parent run is closed, saying it lacks it.
    assert outcome.outputs["markdown"].is_file()
    assert parent.info.status == "FAILED"
    assert str(artifact_root) in parent.data.tags["dmsweep.artifact_error.report"]
    # ... and so do the sweep's state and outcome (`dmsweep run` prints them).
    assert outcome.tracking_problems
    assert all(str(artifact_root) in problem for problem in outcome.tracking_problems)
    assert outcome.folder.read_state()["tracking_problems"] == outcome.tracking_problems
