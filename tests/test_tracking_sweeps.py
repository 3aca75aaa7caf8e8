"""Sweeps and their MLflow runs on a real store (SQLite): one sweep's runs never mix with another's.

Issue 12, items 8 and 9: a service-named sweep whose first job died during set-up can be
created again; two sweeps of one spec whose Tune trial ids are equal each keep their own child
run.
"""

from __future__ import annotations

import os
import sqlite3
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from service.results.folder import SweepFolder
from service.spec.reading import spec_from_dict
from service.sweep.engine import SpecError, create_sweep
from service.tracking.store import Tracking
from service.tracking.sweep_runs import start_sweep
from service.tracking.trial_runs import TrialLogger, child_run, find_trial_run
from tests.support.specs import tiny_spec

SPEC = tiny_spec(name="twice")


def _sweep(uri: str, tmp_path, sweep_id: str) -> Tracking:
    spec = tmp_path / f"{sweep_id}.yaml"
    spec.write_text("name: twice\n")
    return start_sweep(uri=uri, experiment="twice", sweep_id=sweep_id, spec_file=spec, tags={})


def test_a_trial_id_seen_in_another_sweep_gets_its_own_child_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, second = _sweep(uri, tmp_path, "twice-1"), _sweep(uri, tmp_path, "twice-2")
    assert first.experiment_id == second.experiment_id  # one experiment per spec name
    trial_id = "3a2b1_00000"  # Tune's grid ids: a 20-bit random prefix, then the index

    def run_of(track: Tracking) -> str:
        return child_run(
            track, trial_id=trial_id, name="t", tags={}, params={}, trial_yaml="epochs: 1\n"
        )

    old = run_of(first)
    assert find_trial_run(second, trial_id) is None
    new = run_of(second)
    assert new != old
    assert find_trial_run(first, trial_id) == old
    assert find_trial_run(second, trial_id) == new
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(new).data.tags["mlflow.parentRunId"] == second.parent_run_id
    assert run_of(second) == new  # a resumed trial finds its own run again


def test_a_sweep_whose_first_attempt_died_in_set_up_is_created_again(tmp_path):
    """The folder (and the parent run) a dead first job left do not block the next one."""
    root = tmp_path / "runs"
    spec = spec_from_dict(SPEC)
    text = yaml.safe_dump(SPEC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # What a first job that died after the folder and the parent run, before sweep.json, left:
    left = SweepFolder(root / "twice-7")
    left.path.mkdir(parents=True)
    left.spec_file.write_text(text)
    earlier = _sweep(uri, tmp_path, "twice-7")

    folder = create_sweep(spec, text, storage_path=root, tracking_uri=uri, sweep_id="twice-7")
    state = folder.read_state()
    assert state.sweep_id == "twice-7"
    assert state.tracking is not None
    assert state.tracking["parent_run_id"] == earlier.parent_run_id  # not a second parent run
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [earlier.experiment_id], filter_string="tags.`dmsweep.sweep_id` = 'twice-7'"
    )
    assert len(runs) == 1
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:  # prepared for many writers
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # Once the sweep exists, a second create is refused, naming resume.
    with pytest.raises(SpecError, match="dmsweep resume twice-7"):
        create_sweep(spec, text, storage_path=root, tracking_uri=uri, sweep_id="twice-7")


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store for the tests of a trial's logger (a new store costs seconds)."""
    folder = tmp_path_factory.mktemp("trial-logger")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


@pytest.fixture
def sweep_run(shared_store, request) -> Tracking:
    """A parent run of its own in the shared store."""
    uri, folder = shared_store
    return _sweep(uri, folder, request.node.name[:40].replace("[", "-").rstrip("]"))


def _plan(trial_id: str) -> dict:
    return {
        "trial_id": trial_id,
        "name": "t",
        "tags": {"loss": "dm_ce"},
        "params": {"eta": "0.1"},
        "trial_yaml": "epochs: 2\n",
    }


def test_a_trial_opens_its_child_run_on_its_own_thread_with_provenance(sweep_run):
    track = sweep_run
    logger = TrialLogger.start(track, _plan("a_00000"), log=print)
    run_id = logger.settle()
    assert run_id is not None and find_trial_run(track, "a_00000") == run_id
    run = track.client().get_run(run_id)
    assert run.data.tags["loss"] == "dm_ce" and run.data.params == {"eta": "0.1"}
    deadline = time.monotonic() + 60  # the provenance follows on the same thread
    while "dmsweep.cpu_count" not in run.data.tags:
        assert time.monotonic() < deadline, run.data.tags
        time.sleep(0.1)
        run = track.client().get_run(run_id)
    assert run.data.tags["dmsweep.cpu_count"] == str(os.cpu_count())  # this process's hardware


def test_epochs_that_end_before_the_child_run_exists_are_sent_once_it_does(sweep_run):
    """A trial never waits for MLflow to open its run: the first epochs wait in the logger."""
    track = sweep_run
    opening: Future[str | None] = Future()
    logger = TrialLogger(track, opening, log=print)
    logger.log_epoch({"epoch": 1, "train_loss": 2.5, "val_top1": 30.0})  # returns at once
    assert [m.step for m in logger.pending] == [1, 1]
    opening.set_result(child_run(track, **_plan("a_00000")))
    logger.log_epoch({"epoch": 2, "train_loss": 2.0, "val_top1": 40.0})
    assert logger.pending == [] and logger.close() == []
    client = track.client()
    run_id = opening.result()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_top1"))
    assert history == [(1, 30.0), (2, 40.0)]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_trial_whose_run_could_not_be_opened_trains_untracked(sweep_run, tmp_path):
    """No run (MLflow did not answer; the run waits in the outbox): nothing is sent or raised."""
    track = sweep_run
    opening: Future[str | None] = Future()
    opening.set_result(None)
    logger = TrialLogger(track, opening, log=print)
    logger.log_epoch({"epoch": 1, "train_loss": 2.5})
    logger.log_artifacts(str(tmp_path), "checkpoint")
    logger.log_learning_curve()
    assert logger.pending == [] and logger.close() == []
