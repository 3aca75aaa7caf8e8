"""Optuna's plots of a sweep's studies (service/tracking/study_plots.py), on known trials.

The trials are added by hand (``create_trial``), so which plots a study gets is known: the history
always, the importances from two searched parameters and four completed trials, the xi-t
contour only for a study that searched both xi and t.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from service.tracking.study_plots import (
    CONTOUR,
    HISTORY,
    IMPORTANCES,
    plot_study,
    plot_sweep_studies,
    sweep_study_names,
)

SWEEP = "tune-20261202T000000Z"
DM_BCE = "synthetic/smallnet/mixup/dm_bce"
DM_CE = "synthetic/smallnet/mixup/dm_ce"


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def study_of(storage: str, name: str, trials: list[dict[str, float]], **spaces) -> optuna.Study:
    """A study of ``name`` whose COMPLETE trials have these params, valued by a known function."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for params in trials:
        study.add_trial(
            create_trial(
                params=params,
                distributions={k: spaces[k] for k in params},
                value=sum(params.values()),
            )
        )
    return study


def png(path: Path) -> Image.Image:
    """The image at ``path``, checked to be a PNG with something drawn on it."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = Image.open(path)
    image.load()
    assert image.width > 200 and image.height > 200, image.size
    assert len(image.convert("L").getcolors() or []) > 10, "a blank image"
    return image


def settings() -> dict:
    """Matplotlib's settings but the backend (the plots choose Agg where none was chosen)."""
    return {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")}


def test_a_dm_bce_study_of_xi_and_t_gets_history_importances_and_the_contour(storage, tmp_path):
    spaces = {"xi": FloatDistribution(0.1, 1.0), "t": FloatDistribution(0.0, 2.0)}
    grid = [{"xi": xi, "t": t} for xi, t in itertools.product((0.3, 0.6, 0.9), (0.5, 1.5))]
    study_of(storage, f"{SWEEP}:{DM_BCE}", grid, **spaces)
    style = settings()

    plots = plot_sweep_studies(storage, SWEEP, tmp_path / "plots", metric="val_top1")

    assert plots.skipped == []
    assert {plot.kind for plot in plots.made} == {HISTORY, IMPORTANCES, CONTOUR}
    for plot in plots.made:
        assert plot.study == f"{SWEEP}:{DM_BCE}"
        assert plot.artifact_path == f"optuna/{DM_BCE}"
        assert plot.file == tmp_path / "plots" / DM_BCE / f"{plot.kind}.png"
        png(plot.file)
    # Optuna's plots set a pyplot style: the process's own settings are given back.
    assert settings() == style


def test_one_searched_parameter_skips_the_importances_and_has_no_contour(storage, tmp_path):
    etas = {"eta": CategoricalDistribution([0.1, 0.5, 1.0, 2.0, 4.0])}
    for seed in (0, 1):
        trials = [{"eta": eta} for eta in (0.1, 0.5, 1.0, 2.0, 4.0)]
        study_of(storage, f"{SWEEP}:{DM_CE}:seed{seed}", trials, **etas)
    study_of(storage, f"other-{SWEEP}:{DM_CE}", [{"eta": 0.1}], **etas)  # another sweep's

    assert sweep_study_names(storage, SWEEP) == [f"{SWEEP}:{DM_CE}:seed0", f"{SWEEP}:{DM_CE}:seed1"]
    plots = plot_sweep_studies(storage, SWEEP, tmp_path)

    assert sorted((p.kind, p.artifact_path) for p in plots.made) == [
        (HISTORY, f"optuna/{DM_CE}/seed0"),
        (HISTORY, f"optuna/{DM_CE}/seed1"),
    ]
    assert {(s.kind, s.reason) for s in plots.skipped} == {
        (IMPORTANCES, "needs 2 searched parameters, the study searched eta")
    }
    png(tmp_path / DM_CE / "seed1" / "history.png")
    assert not list(tmp_path.glob("**/importances.png")) and not list(tmp_path.glob("**/contour*"))


def test_too_few_trials_are_skipped_with_their_reasons(storage, tmp_path):
    spaces = {"xi": FloatDistribution(0.1, 1.0), "t": FloatDistribution(0.0, 2.0)}
    study = study_of(storage, f"{SWEEP}:{DM_BCE}", [{"xi": 0.5, "t": 1.0}], **spaces)
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"xi": 0.9, "t": 0.2},
            distributions=spaces,
            intermediate_values={1: 0.1},
        )
    )

    plots = plot_study(study, tmp_path, DM_BCE)

    assert [p.kind for p in plots.made] == [HISTORY]
    reasons = {s.kind: s.reason for s in plots.skipped}
    assert reasons == {
        IMPORTANCES: "needs at least 4 completed trials, the study has 1",
        CONTOUR: "needs 2 values of xi in completed trials, the study has 1",
    }
    empty = optuna.create_study(study_name=f"{SWEEP}:empty", storage=storage)
    nothing = plot_study(empty, tmp_path, "empty")
    assert nothing.made == [] and {s.kind: s.reason for s in nothing.skipped} == {
        HISTORY: "no completed trial",
        IMPORTANCES: "needs 2 searched parameters, the study searched none",
    }


def test_a_plot_that_cannot_be_written_is_skipped_not_raised(storage, tmp_path):
    etas = {"eta": CategoricalDistribution([0.1, 1.0])}
    study = study_of(storage, f"{SWEEP}:{DM_CE}", [{"eta": 0.1}, {"eta": 1.0}], **etas)
    blocker = tmp_path / "plots"
    blocker.write_text("a file where the folder goes")

    plots = plot_study(study, blocker, DM_CE)

    assert plots.made == []
    history = next(s for s in plots.skipped if s.kind == HISTORY)
    assert str(blocker) in history.reason
