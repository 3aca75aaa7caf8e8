"""CellStudies reports to Optuna what Tune hands it, once per epoch (service/sweep/searcher.py)."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import TrialState

from service.sweep.searcher import CellStudies, StudyPlan


def searcher(tmp_path, epochs: int) -> CellStudies:
    plan = StudyPlan(
        name="s:cell",
        cell="cell",
        seed=0,
        space={"eta": [0.1, 1.0]},
        budget=2,
        epochs=epochs,
        sampler_seed=0,
    )
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    return CellStudies([plan], storage_url=url, sampler="grid", metric="acc", mode="max")


def stored(tmp_path) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name="s:cell", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    [trial] = study.trials
    return trial


@pytest.mark.parametrize("also_as_a_result", [True, False])
def test_the_last_epoch_is_reported_once_whichever_way_tune_hands_it_over(
    tmp_path, also_as_a_result
):
    studies = searcher(tmp_path, epochs=2)
    studies.suggest("t1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        studies.on_trial_result("t1", {"acc": 0.25, "epoch": 1})
        if also_as_a_result:
            studies.on_trial_result("t1", {"acc": 0.5, "epoch": 2})
        studies.on_trial_complete("t1", {"acc": 0.5, "epoch": 2})
    trial = stored(tmp_path)
    assert trial.intermediate_values == {1: 0.25, 2: 0.5}
    assert trial.state == TrialState.COMPLETE
    assert trial.value == 0.5


def test_a_trial_stopped_before_its_last_epoch_is_pruned_with_its_last_value(tmp_path):
    studies = searcher(tmp_path, epochs=3)
    studies.suggest("t1")
    studies.on_trial_result("t1", {"acc": 0.25, "epoch": 1})
    studies.on_trial_complete("t1", {"acc": 0.25, "epoch": 1})
    trial = stored(tmp_path)
    assert trial.intermediate_values == {1: 0.25}
    assert trial.state == TrialState.PRUNED
    assert trial.value == 0.25
