"""Optuna through the engine: the grid sampler covers its grid once, ASHA's stops are PRUNED."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from sweep_helpers import mlflow_children, run_spec, tiny_spec, tpe_asha

from service.results.results_file import read_results

pytestmark = pytest.mark.usefixtures("local_ray")

CELL = "synthetic/smallnet/mixup/dm_ce"


@pytest.fixture
def another_ray_on_this_machine(tmp_path):
    """A second Ray cluster on the machine, as another user's or a ``ray start`` would be."""
    from services import ray_head

    with ray_head(tmp_path / "other-ray", num_cpus=1) as head:
        yield head


def study(outcome, cell: str = CELL) -> optuna.Study:
    return optuna.load_study(
        study_name=f"{outcome.folder.sweep_id}:{cell}",
        storage=f"sqlite:///{outcome.folder.path / 'optuna.db'}",
    )


def test_a_categorical_grid_over_eta_runs_every_point_once(tmp_path):
    etas = [0.01, 0.5, 2.0]
    spec = tiny_spec(
        "grid-eta",
        grid={"method": ["mixup"], "loss": ["dm_ce"]},
        epochs=1,
        search={"parameters": {"eta": etas}, "sampler": "grid"},
    )
    outcome = run_spec(spec, tmp_path)
    assert outcome.exit_code == 0
    records = [r.to_row() for r in outcome.folder.records()]  # as stored
    assert sorted(r["hp.eta"] for r in records) == etas
    # The study is readable with optuna's own tools, one COMPLETE trial per grid point.
    trials = study(outcome).trials
    assert sorted(t.params["eta"] for t in trials) == etas
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    by_eta = {r["hp.eta"]: r["val_top1"] for r in records}
    for trial in trials:
        assert trial.value == pytest.approx(by_eta[trial.params["eta"]])
    # The eta each trial trained with is the one Optuna chose (the run's params say so).
    client, parent, children = mlflow_children(outcome.folder.path)
    assert sorted(float(r.data.params["loss.eta"]) for r in children) == etas
    # Optuna's plot of the study in the parent run and the folder: the history only (one
    # searched parameter: no importances; no xi and t: no contour).
    plots = client.list_artifacts(parent.info.run_id, f"optuna/{CELL}")
    assert [(Path(a.path).name, a.file_size > 0) for a in plots] == [("history.png", True)]
    folder_plot = outcome.folder.study_plots_dir / CELL / "history.png"
    assert folder_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [b.cell for b in outcome.best] == [CELL]
    best_eta = max(by_eta, key=by_eta.get)
    assert outcome.best[0].setting["eta"] == best_eta
    # Every trial in the results file; the table shows the cell's best setting only.
    assert len(read_results(outcome.outputs["results"])) == len(etas)
    best = next(r for r in records if r["hp.eta"] == best_eta)
    # A short run: the table headlines the final top-1.
    assert f"{best['val_top1']:.2f} (n=1)" in outcome.outputs["markdown"].read_text()


def test_tpe_with_asha_stops_trials_early_and_optuna_sees_them_pruned(
    tmp_path, another_ray_on_this_machine
):
    epochs, samples = 3, 5
    spec = tiny_spec(
        "tpe-asha",
        grid={"method": ["mixup", "cutmix"], "loss": ["dm_ce"]},
        epochs=epochs,
        **tpe_asha(samples),
    )
    outcome = run_spec(spec, tmp_path)
    assert outcome.exit_code == 0
    records = [r.to_row() for r in outcome.folder.records()]  # as stored
    assert len(records) == 2 * samples
    pruned = [r for r in records if r["status"] == "pruned"]
    assert pruned, "ASHA stopped no trial"
    assert all(r["epoch"] < epochs for r in pruned)
    for cell in ("synthetic/smallnet/mixup/dm_ce", "synthetic/smallnet/cutmix/dm_ce"):
        trials = study(outcome, cell).trials
        assert len(trials) == samples
        states = [t.state for t in trials]
        cell_pruned = [r for r in pruned if r["cell"] == cell]
        assert states.count(TrialState.PRUNED) == len(cell_pruned)
        # ASHA compares a cell's trials with each other only: the first to reach a rung sets
        # its cut-off and goes on, so every cell has a finished setting.
        assert states.count(TrialState.COMPLETE) == samples - len(cell_pruned) >= 1
        for trial in trials:
            steps = sorted(trial.intermediate_values)
            assert steps == list(range(1, len(steps) + 1))  # one value per epoch, step = epoch
            # Optuna keeps a pruned trial's last intermediate value as its value.
            assert trial.value == pytest.approx(trial.intermediate_values[steps[-1]])
            assert (len(steps) < epochs) == (trial.state == TrialState.PRUNED)
    assert sorted(b.cell for b in outcome.best) == sorted(
        ["synthetic/smallnet/mixup/dm_ce", "synthetic/smallnet/cutmix/dm_ce"]
    )
    # Pruned trials' MLflow runs are closed, not left running.
    state = outcome.folder.read_state().tracking
    client = MlflowClient(tracking_uri=state["uri"])
    runs = client.search_runs([state["experiment_id"]])
    statuses = sorted(r.info.status for r in runs if r.info.run_id != state["parent_run_id"])
    assert statuses.count("KILLED") == len(pruned)
    assert statuses.count("FINISHED") == 2 * samples - len(pruned)
    # The stopped trials' workers gave their CPUs back (checked after each test, conftest.py),
    # although Ray's helper that frees them could have taken the other Ray for this one.
