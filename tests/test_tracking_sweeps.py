"""Sweeps and their MLflow runs on a real store (SQLite): one sweep's runs never mix with another's.

Issue 12, items 8 and 9: a service-named sweep whose first job died during set-up can be
created again; two sweeps of one spec whose Tune trial ids are equal each keep their own child
run.
"""

from __future__ import annotations

import sqlite3

import pytest
import yaml
from mlflow import MlflowClient

from service.results.folder import SweepFolder
from service.spec.reading import spec_from_dict
from service.sweep.engine import SpecError, create_sweep
from service.tracking.store import Tracking
from service.tracking.sweep_runs import start_sweep
from service.tracking.trial_runs import child_run, find_trial_run
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
