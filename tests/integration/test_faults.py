"""Faults with real Ray processes: a killed training worker, a lost node, storage that fails.

Nothing is mocked: a worker process is SIGKILLed, a node of a ``ray.cluster_utils.Cluster`` is
removed as in a crash, and storage is broken on disk, with a regular file where a folder must
be (``Not a directory`` / ``File exists`` hold for root too, unlike permissions).

Each way a trial recovers is exercised once: a trial of one worker trains in its Tune trial's
process, and Tune retries it from the newest checkpoint in its folder (the lost node; storage
that fails; ``test_sweep_resume.py`` for a killed sweep driver); a trial of two workers is a Ray
Train run, whose worker group Ray Train restarts from its last checkpoint (the killed worker).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from sweep_helpers import mlflow_children, run_spec, synthetic_data, tiny_spec, write_spec

from service.spec.reading import spec_from_dict
from service.sweep.engine import create_sweep, execute
from tests.support.cluster import run_cluster_script

SCRIPT = Path(__file__).with_name("fault_cluster.py")
EPOCHS = 4
# Epochs of ~1.5 s on 2 cores: a fault lands between two checkpoints, far from a trial's end.
DATA = synthetic_data(train_images=1024)
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


# --- a killed worker ---------------------------------------------------------------------------


def _run_killing_the_worker_after_epoch_2(tmp_path: Path):
    """A one-trial sweep of two workers whose rank 0 is SIGKILLed: (outcome, trial id, pid)."""

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
    spec = fault_spec("kill-worker", ["mce"], resources={"workers_per_trial": 2})
    outcome = run_spec(spec, tmp_path)
    trial_id, killed = watcher.result()
    return outcome, trial_id, killed


def _check_the_trial_succeeded(outcome, trial_id: str) -> dict:
    """The sweep's one record, that of the trial: succeeded, all epochs."""
    assert outcome.exit_code == 0 and outcome.counts["succeeded"] == 1
    [record] = [r.to_row() for r in outcome.folder.records()]
    assert record["trial_id"] == trial_id and record["status"] == "succeeded"
    assert record["epoch"] == EPOCHS
    return record


def _check_the_worker_resumed_from_its_checkpoint(outcome, trial_id: str, killed: int) -> set:
    """Ray Train restarted the worker group from the last checkpoint, in a new process.

    Returns the epochs trained again after the restart.
    """
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
    return again


def _check_tune_saw_each_epoch_once(outcome, trial_id: str, record: dict) -> None:
    """A report lost with the worker never reached Tune; one final result, the record's."""
    rows = tune_results(outcome.folder.path, trial_id)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    finals = [r for r in rows if "top1_best" in r]
    assert len(finals) == 1 and finals[0]["top1_best"] == record["top1_best"]


def _check_mlflow_has_each_epoch_once(outcome, trial_id: str, record: dict, again: set) -> None:
    """One child run, finished, with one value per epoch; the summary metrics logged once.

    An epoch trained again after the restart may carry a second value: the same one (the
    resumed run is the same run, bitwise, on CPU).
    """
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


@pytest.mark.usefixtures("local_ray")
def test_a_killed_worker_resumes_from_its_checkpoint_and_is_recorded_once(tmp_path):
    """A training worker of a one-trial, two-worker sweep is SIGKILLed after its second epoch:
    Ray Train restarts the worker group from the last checkpoint."""
    outcome, trial_id, killed = _run_killing_the_worker_after_epoch_2(tmp_path)
    record = _check_the_trial_succeeded(outcome, trial_id)
    again = _check_the_worker_resumed_from_its_checkpoint(outcome, trial_id, killed)
    _check_tune_saw_each_epoch_once(outcome, trial_id, record)
    _check_mlflow_has_each_epoch_once(outcome, trial_id, record, again)


# --- a lost node --------------------------------------------------------------------------------


def _run_losing_the_second_node(tmp_path: Path) -> dict:
    """Two trials, the second node removed mid-sweep: the outcome ``fault_cluster.py`` prints."""
    spec = write_spec(tmp_path, fault_spec("lost-node", ["mce", "dm_ce"]))
    outcome = run_cluster_script(
        SCRIPT, spec, tmp_path / "runs", tmp_path / "cluster.log", timeout_s=480
    )
    assert "removed_at" in outcome["remover"], outcome
    return outcome


def _check_both_trials_succeeded(outcome: dict, folder: Path) -> dict[str, dict]:
    """Both trials recorded as succeeded after every epoch, and Tune ended both; the records."""
    assert outcome["exit_code"] == 0
    records = {r["trial_id"]: r for r in records_in(folder)}
    assert len(records) == 2
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert {r["epoch"] for r in records.values()} == {EPOCHS}
    assert outcome["tune_trials"] == dict.fromkeys(records, "TERMINATED")
    return records


def _check_what_the_node_held_came_back_on_the_head(folder: Path, head: str, removed: str):
    """The trial trained on the lost node resumed on the head, from its checkpoint."""
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


def _check_each_trial_finished_once(folder: Path) -> None:
    """Each trial's log says it finished once; Tune has no epoch twice and one final result."""
    for trial_id, log in trial_logs(folder).items():
        assert log.count("finished") == 1, log
        # A lost driver takes with it the epochs it had not passed on yet: Tune's history of
        # that trial may miss some.
        epochs = [r["epoch"] for r in tune_results(folder, trial_id)]
        assert epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS, epochs
        assert sum("top1_best" in r for r in tune_results(folder, trial_id)) == 1


def _check_mlflow_runs_finished(folder: Path, records: dict[str, dict]) -> None:
    """One finished child run per trial, and the parent run finished."""
    _, parent, children = mlflow_children(folder)
    assert sorted(r.data.tags["dmsweep.trial_id"] for r in children) == sorted(records)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"


def test_a_lost_node_reschedules_its_trials_and_each_finishes_once(tmp_path):
    """Two 1-CPU nodes, each training one trial of one worker in its Tune trial's process. The
    second node is removed as in a crash (``fault_cluster.py``): Tune retries its trial on the
    head, from the newest checkpoint in the trial's folder."""
    outcome = _run_losing_the_second_node(tmp_path)
    folder = Path(outcome["folder"])
    records = _check_both_trials_succeeded(outcome, folder)
    _check_what_the_node_held_came_back_on_the_head(folder, outcome["head"], outcome["removed"])
    _check_each_trial_finished_once(folder)
    _check_mlflow_runs_finished(folder, records)


# --- storage that fails -------------------------------------------------------------------------


def _run_with_storage_broken(tmp_path: Path):
    """A two-trial sweep whose artifact store is made a file before it runs, and whose first
    trial to train has its checkpoint folder replaced by a file: (folder, outcome, that trial,
    the artifact store's path)."""
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
    return folder, outcome, blocked, artifact_root


def _check_the_blocked_trial_failed_naming_its_folder(folder, records: dict, blocked: str):
    """Its error names its checkpoint folder and the problem."""
    failed = records[blocked]
    checkpoints = str(folder.train_dir / blocked)
    assert failed["status"] == "failed"
    assert checkpoints in failed["error"], failed["error"]
    assert re.search(r"File exists|Not a directory", failed["error"]), failed["error"]
    assert checkpoints in folder.log_file(blocked).read_text()


def _check_the_other_trial_named_each_artifact_it_lost(
    folder, records: dict, other: str, artifact_root: Path
):
    """It trained to its end, once, and recorded its result; each artifact it could not store
    is named in its log with the path and the problem."""
    done = records[other]
    assert done["status"] == "succeeded" and done["epoch"] == EPOCHS
    assert done["val_top1"] >= 0 and done["top1_best"] >= done["val_top1"]
    log = folder.log_file(other).read_text()
    assert log.count("start: worker") == 1 and "ended by" not in log, log
    for artifact in ("trial.yaml", "checkpoint", "learning_curve.png"):
        line = next(x for x in log.splitlines() if f"artifact {artifact} was not stored" in x)
        assert "Not a directory" in line and str(artifact_root) in line, line


def _check_mlflow_says_what_is_missing(
    folder, outcome, blocked: str, other: str, artifact_root: Path
) -> None:
    """MLflow keeps the metrics (its store is not the artifact store) and says what is missing;
    so do the sweep's state and outcome."""
    checkpoints = str(folder.train_dir / blocked)
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
    assert outcome.folder.read_state().tracking_problems == outcome.tracking_problems


@pytest.mark.usefixtures("local_ray")
def test_storage_that_fails_names_its_path_and_spares_the_other_trials(tmp_path):
    """The artifact store of the sweep breaks after it started, and one trial's checkpoint
    folder is replaced by a file mid-trial: that trial fails naming its folder, the other
    trains to its end; every artifact that could not be stored is named with its path."""
    folder, outcome, blocked, artifact_root = _run_with_storage_broken(tmp_path)
    assert outcome.exit_code == 1 and not outcome.interrupted
    assert outcome.counts["failed"] == 1 and outcome.counts["succeeded"] == 1
    records = {r.trial_id: r.to_row() for r in folder.records()}
    [other] = [t for t in records if t != blocked]
    _check_the_blocked_trial_failed_naming_its_folder(folder, records, blocked)
    _check_the_other_trial_named_each_artifact_it_lost(folder, records, other, artifact_root)
    _check_mlflow_says_what_is_missing(folder, outcome, blocked, other, artifact_root)
