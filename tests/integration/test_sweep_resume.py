"""A sweep whose driver is SIGKILLed or interrupted is finished by ``dmsweep resume``."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from sweep_helpers import DMSWEEP, mlflow_children, synthetic_data, tiny_spec, wait_for, write_spec

from tests.support.processes import end_session, kill_session, start_session

EPOCHS = 4
# Epochs of ~1.5 s on 2 cores: a trial is seen between its checkpoints (polled every 0.25 s)
# in the two epochs after its second one.
DATA = synthetic_data(train_images=1024)


def sweep_folder(storage: Path) -> Path | None:
    folders = [p for p in storage.glob("resume-*") if (p / "sweep.json").is_file()]
    return folders[0] if folders else None


def records(folder: Path) -> dict[str, str]:
    trials = folder / "trials"
    return {p.stem: p.read_text() for p in trials.glob("*.json")} if trials.is_dir() else {}


def interrupted_trial(folder: Path) -> str | None:
    """A trial that is training its third epoch: epoch 1's checkpoint is registered (the loop
    goes on only once Ray Train has it), the trial is far from done."""
    done = records(folder)
    for log in (folder / "logs").glob("*.log") if (folder / "logs").is_dir() else []:
        if log.stem not in done and "epoch 2:" in log.read_text():
            return log.stem
    return None


def start_run(tmp_path: Path, **changes):
    """``dmsweep run`` of the resume spec in its own session; the process and its storage."""
    spec_file = write_spec(tmp_path, tiny_spec("resume", epochs=EPOCHS, data=DATA, **changes))
    storage = tmp_path / "runs"
    command = [*DMSWEEP, "run", str(spec_file), "--storage-path", str(storage)]
    return start_session(command, tmp_path / "run.log"), storage


def _phase_kill_the_driver_mid_trial(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """``dmsweep run``, one trial at a time, SIGKILLed once a trial has finished and another is
    mid-training: the sweep folder, the interrupted trial and the records made before."""
    first, storage = start_run(tmp_path, resources={"max_concurrent_trials": 1})
    try:
        folder = wait_for(lambda: sweep_folder(storage), 120, "the sweep folder", first)
        wait_for(lambda: records(folder), 300, "a finished trial", first)
        interrupted = wait_for(
            lambda: interrupted_trial(folder), 300, "a trial mid-training", first
        )
        before = records(folder)
        first.kill()  # SIGKILL: no clean-up in the driver at all
        first.wait()
    finally:
        kill_session(first.pid)
    assert interrupted not in before and len(before) < 4
    return folder, interrupted, before


def _phase_resume_to_the_end(tmp_path: Path, folder: Path, trials: int = 4) -> dict[str, str]:
    """``dmsweep resume`` of the sweep, run to its end: every trial's record, all succeeded."""
    second = start_session(
        [*DMSWEEP, "resume", str(folder)], tmp_path / "resume.log", env={"COLUMNS": "160"}
    )
    try:
        rc = second.wait(timeout=600)
    finally:
        end_session(second.pid)
    output = (tmp_path / "resume.log").read_text()
    assert rc == 0, output

    after = records(folder)
    assert len(after) == trials
    assert all(json.loads(r)["status"] == "succeeded" for r in after.values())
    return after


def _check_finished_trials_ran_once(folder: Path, before: dict, after: dict) -> None:
    """Finished before the kill: neither trained again nor recorded again."""
    for trial_id, record in before.items():
        assert after[trial_id] == record
        assert (folder / "logs" / f"{trial_id}.log").read_text().count("finished") == 1


def _check_the_interrupted_trial_went_on_from_its_checkpoint(folder: Path, interrupted: str):
    """Not from epoch 0."""
    log = (folder / "logs" / f"{interrupted}.log").read_text()
    resumed = log.split("resume from", 1)
    assert len(resumed) == 2, log
    epochs_after = [int(e) for e in re.findall(r"epoch (\d+):", resumed[1])]
    assert epochs_after[0] > 1 and epochs_after[-1] == EPOCHS, log


def _check_mlflow_has_one_run_per_trial(folder: Path, after: dict, interrupted: str) -> None:
    """One parent, one child per trial (the resumed trial kept its run), all finished."""
    client, parent, children = mlflow_children(folder)
    assert len(children) == 4
    assert sorted(r.data.tags["dmsweep.trial_id"] for r in children) == sorted(after)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    child = next(r for r in children if r.data.tags["dmsweep.trial_id"] == interrupted)
    steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_top1")}
    assert steps == set(range(1, EPOCHS + 1))


def test_a_killed_driver_is_resumed_without_rerunning_finished_trials(tmp_path):
    folder, interrupted, before = _phase_kill_the_driver_mid_trial(tmp_path)
    after = _phase_resume_to_the_end(tmp_path, folder)
    _check_finished_trials_ran_once(folder, before, after)
    _check_the_interrupted_trial_went_on_from_its_checkpoint(folder, interrupted)
    _check_mlflow_has_one_run_per_trial(folder, after, interrupted)


def test_ctrl_c_leaves_a_resumable_sweep_and_exits_130_and_its_train_runs_resume(tmp_path):
    """Ctrl-C, then `dmsweep resume`, on trials of two workers: the path Ray Train owns.

    The killed-driver test above covers trials trained in place (one worker); here the
    interrupted trial is a Ray Train run, restored by name from its last checkpoint.
    """
    one_trial = {"method": ["mixup"], "loss": ["mce"]}
    run, storage = start_run(tmp_path, grid=one_trial, resources={"workers_per_trial": 2})
    try:
        folder = wait_for(lambda: sweep_folder(storage), 120, "the sweep folder", run)
        interrupted = wait_for(lambda: interrupted_trial(folder), 300, "a trial mid-training", run)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        rc = run.wait(timeout=120)
    finally:
        end_session(run.pid)
    output = (tmp_path / "run.log").read_text()
    assert rc == 130, output
    assert f"continue with `dmsweep resume {folder}`" in " ".join(output.split())
    assert json.loads((folder / "sweep.json").read_text())["status"] == "interrupted"
    assert records(folder) == {}

    _phase_resume_to_the_end(tmp_path, folder, trials=1)
    _check_the_interrupted_trial_went_on_from_its_checkpoint(folder, interrupted)
