"""The sweep folder and its typed records, on real files: round trips, lookups, progress."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone
from pathlib import Path

import pytest

from service.results.folder import SweepFolder, new_sweep_id
from service.results.records import (
    Failure,
    SweepInfo,
    SweepStatus,
    TrialRecord,
    TrialState,
    state_counts,
)

# A record as dmsweep has always stored it (trials/<id>.json), Tune's bookkeeping included.
STORED = {
    "trial_id": "a1b2c_00001",
    "name": "synthetic/smallnet/mixup/dm_ce/seed0",
    "cell": "synthetic/smallnet/mixup/dm_ce",
    "dataset": "synthetic",
    "backbone": "smallnet",
    "method": "mixup",
    "loss": "dm_ce",
    "seed": 0,
    "status": "succeeded",
    "recipe": "smoke",
    "epochs": 2,
    "comparable": False,
    "hp.alpha": 0.2,
    "hp.eta": 0.1,
    "epoch": 2,
    "val_top1": 41.5,
    "top1_median_last10": 40.25,
}


def test_a_stored_record_reads_back_typed_and_writes_back_the_same() -> None:
    typed = TrialRecord.from_row(STORED)
    assert typed.status is TrialState.SUCCEEDED and typed.seed == 0 and not typed.comparable
    assert typed.hyperparameters == {"alpha": 0.2, "eta": 0.1}
    assert typed.metrics == {"epoch": 2, "val_top1": 41.5, "top1_median_last10": 40.25}
    assert typed.metric("val_top1") == 41.5 and typed.metric("fgsm_error") is None
    assert typed.to_row() == STORED
    assert json.loads(json.dumps(typed.to_row())) == STORED


def test_a_failure_keeps_its_error_and_what_is_not_a_number_is_no_metric() -> None:
    failed = {**STORED, "status": "failed", "error": "ValueError: bad", "traceback": "T"}
    failed |= {"deterministic": True, "done": True, "note": "text", "lr": None}
    typed = TrialRecord.from_row(failed)
    assert (typed.error, typed.traceback, typed.deterministic) == ("ValueError: bad", "T", True)
    assert "done" not in typed.metrics and "note" not in typed.metrics
    assert "lr" not in typed.metrics
    assert TrialRecord.from_row(typed.to_row()) == typed


def test_the_folder_writes_reads_and_counts_records(tmp_path: Path) -> None:
    folder = SweepFolder(tmp_path / "s")
    assert folder.records() == [] and folder.read_record("x") is None
    good = TrialRecord.from_row(STORED)
    pruned = TrialRecord.from_row({**STORED, "trial_id": "a1b2c_00002", "status": "pruned"})
    folder.write_record(good)
    folder.write_record(pruned)
    assert folder.records() == [good, pruned]
    assert folder.read_record(good.trial_id) == good
    assert state_counts(folder.records()) == {"failed": 0, "pruned": 1, "succeeded": 1}
    assert json.loads(folder.record_file(good.trial_id).read_text()) == STORED


def test_a_workers_failure_is_left_for_its_driver(tmp_path: Path) -> None:
    folder = SweepFolder(tmp_path / "s")
    assert folder.read_failure("t") is None
    folder.write_failure("t", Failure("NonFiniteLossError: nan", "Traceback ..."))
    assert folder.read_failure("t") == Failure("NonFiniteLossError: nan", "Traceback ...")


def test_sweep_json_reads_back_and_leaves_keys_it_does_not_know(tmp_path: Path) -> None:
    folder = SweepFolder(tmp_path / "s")
    with pytest.raises(ValueError, match=r"is not a sweep folder: sweep\.json is missing"):
        folder.read_state()
    folder.write_state(SweepInfo("s", "smoke", SweepStatus.CREATED, git_commit="abc"))
    running = folder.update_state(status=SweepStatus.RUNNING)
    assert running == folder.read_state()
    assert running.status is SweepStatus.RUNNING and running.git_commit == "abc"
    stored = json.loads(folder.state_file.read_text())
    assert stored["status"] == "running"
    folder.state_file.write_text(json.dumps({**stored, "added_later": 1}))
    assert folder.read_state() == running


def test_a_trial_is_found_by_its_whole_name_or_a_unique_prefix(tmp_path: Path) -> None:
    folder = SweepFolder(tmp_path / "s")
    names = {"x_00001": "c/seed1", "x_00010": "c/seed10", "y_00003": "d/seed0"}
    for trial_id, name in names.items():
        folder.write_record(TrialRecord.from_row({**STORED, "trial_id": trial_id, "name": name}))
    folder.logs_dir.mkdir()
    (folder.logs_dir / "z_00004.log").write_text("running\n")
    assert folder.find_trial("c/seed1") == "x_00001"  # a whole name that begins another
    assert folder.find_trial("c/seed10") == "x_00010"
    assert folder.find_trial("y_") == "y_00003"
    assert folder.find_trial("z_00004") == "z_00004"  # started, no record yet
    with pytest.raises(LookupError, match="matches x_00001, x_00010"):
        folder.find_trial("x_")
    with pytest.raises(LookupError, match="matches none"):
        folder.find_trial("nope")


@pytest.mark.parametrize(("mode", "best"), [("max", ("b", 60.0)), ("min", ("a", 40.0))])
def test_progress_counts_trials_and_picks_the_best_in_the_searchs_direction(
    tmp_path: Path, mode: str, best: tuple[str, float]
) -> None:
    folder = SweepFolder(tmp_path / "s")
    rows = [("t1", "a", "succeeded", 40.0), ("t2", "b", "succeeded", 60.0)]
    rows += [("t3", "c", "failed", None), ("t4", "d", "pruned", 99.0)]
    for trial_id, name, status, value in rows:
        row = {**STORED, "trial_id": trial_id, "name": name, "status": status}
        row["val_top1"] = value
        folder.write_record(TrialRecord.from_row(row))
    folder.logs_dir.mkdir()
    for trial_id in ("t1", "t2", "t3", "t4", "t5"):
        (folder.logs_dir / f"{trial_id}.log").write_text("")
    progress = folder.progress("val_top1", mode)
    assert (progress.done, progress.unfinished, progress.failed, progress.pruned) == (4, 1, 1, 1)
    assert progress.best == best  # the pruned trial's 99 is no finished result


def test_a_folder_pickles_as_its_path(tmp_path: Path) -> None:
    folder = SweepFolder(tmp_path / "s")
    assert pickle.loads(pickle.dumps(folder)) == folder
    assert folder.__reduce__() == (SweepFolder, (tmp_path / "s",))
    assert pickle.loads(pickle.dumps(folder)).trials_dir == tmp_path / "s" / "trials"


def test_new_sweep_ids_skip_every_id_in_use(tmp_path: Path) -> None:
    """Same name, same second: the folder's and the store's ids are both skipped, in order."""
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
    (tmp_path / "s-20261201T120000Z").mkdir()
    stored = {"s-20261201T120000Z-2", "s-20261201T120000Z-3"}
    assert new_sweep_id("s", tmp_path, now, taken=stored.__contains__) == "s-20261201T120000Z-4"
    assert new_sweep_id("t", tmp_path, now) == "t-20261201T120000Z"
