"""Optuna's plots of a tuning sweep's studies: PNG files for the sweep's parent MLflow run.

A tuning sweep keeps one Optuna study per cell (and seed), named ``<sweep id>:<cell id>`` or
``<sweep id>:<cell id>:seed<k>`` (``service.sweep.searcher``). At the sweep's end the engine
draws, for each study, with ``optuna.visualization.matplotlib`` on Matplotlib's Agg canvas:

* ``history.png``: the optimization history (a study with at least one completed trial);
* ``importances.png``: the parameter importances (Optuna's default evaluator), for a study that
  searched at least two parameters and completed ``MIN_IMPORTANCE_TRIALS`` trials;
* ``contour_xi_t.png``: the xi-t contour, for a study that searched both xi and t (DM(BCE), the
  one loss they rescale), once two values of each were tried in completed trials.

Each study's files go to ``<out>/<cell id>[/seed<k>]/`` (the sweep folder's ``optuna_plots``) and
into the parent run under ``optuna/<cell id>[/seed<k>]/``. A plot that is not drawn is a
``SkippedPlot`` with its reason, logged: a plot never fails the sweep.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.storage.paths import AnyPath

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

# The parent run's folder of the plots, and the sweep folder's (``SweepFolder.study_plots_dir``).
ARTIFACT_ROOT = "optuna"
# Importances of fewer completed trials rank noise (Optuna warns below a handful, too).
MIN_IMPORTANCE_TRIALS = 4
CONTOUR_PARAMS = ("xi", "t")
HISTORY, IMPORTANCES, CONTOUR = "history", "importances", "contour_xi_t"
# pyplot (which Optuna's plots draw with) is one state per process.
_DRAWING = threading.Lock()


@dataclass(frozen=True)
class StudyPlot:
    """One PNG drawn of a study: where it is, and the folder of the parent run it goes to."""

    study: str
    kind: str  # HISTORY, IMPORTANCES or CONTOUR
    file: AnyPath
    artifact_path: str  # optuna/<cell id>[/seed<k>]


@dataclass(frozen=True)
class SkippedPlot:
    """A plot not drawn, and why."""

    study: str
    kind: str
    reason: str


@dataclass
class StudyPlots:
    """The plots of a sweep's studies: those drawn and those skipped."""

    made: list[StudyPlot] = field(default_factory=list)
    skipped: list[SkippedPlot] = field(default_factory=list)

    def extend(self, other: StudyPlots) -> None:
        """Add ``other``'s plots to these."""
        self.made.extend(other.made)
        self.skipped.extend(other.skipped)


def sweep_study_names(storage: str | optuna.storages.BaseStorage, sweep_id: str) -> list[str]:
    """The studies of the sweep ``sweep_id`` in ``storage``, sorted (``dmsweep studies`` too)."""
    import optuna

    names = optuna.study.get_all_study_names(storage=storage)
    return sorted(name for name in names if name.startswith(f"{sweep_id}:"))


def study_label(study_name: str, sweep_id: str) -> str:
    """``<cell id>`` or ``<cell id>/seed<k>``: the study's folder under ``optuna/``."""
    return study_name.removeprefix(f"{sweep_id}:").replace(":", "/")


def plot_sweep_studies(
    storage: str | optuna.storages.BaseStorage,
    sweep_id: str,
    out: AnyPath,
    metric: str = "Objective Value",
) -> StudyPlots:
    """Draw every study of the sweep ``sweep_id`` into ``out``; what was drawn and skipped.

    ``metric``: what the studies' values are (the search's metric), as the plots label them.
    """
    import optuna

    if isinstance(storage, str):  # one storage (and connection pool) for all the studies
        storage = optuna.storages.RDBStorage(storage)
    plots = StudyPlots()
    for name in sweep_study_names(storage, sweep_id):
        study = optuna.load_study(study_name=name, storage=storage)
        plots.extend(plot_study(study, out, study_label(name, sweep_id), metric))
    return plots


def plot_study(
    study: optuna.Study, out: AnyPath, label: str, metric: str = "Objective Value"
) -> StudyPlots:
    """Draw one study's plots into ``out/<label>/`` (see the module docstring)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = _searched(complete)
    plots = StudyPlots()

    def attempt(kind: str, reason: str | None, draw: Callable[[], Any]) -> None:
        file = out / label / f"{kind}.png"
        if reason is not None:  # the study cannot have it
            logger.info("optuna plot %s of %s skipped: %s", kind, study.study_name, reason)
        else:
            reason = _draw(draw, file)
            if reason is None:
                plots.made.append(
                    StudyPlot(study.study_name, kind, file, f"{ARTIFACT_ROOT}/{label}")
                )
                return
            logger.warning("optuna plot %s of %s failed: %s", kind, study.study_name, reason)
        plots.skipped.append(SkippedPlot(study.study_name, kind, reason))

    _agg_unless_chosen()
    from optuna.visualization import matplotlib as optuna_plots  # imports pyplot

    attempt(
        HISTORY,
        None if complete else "no completed trial",
        lambda: optuna_plots.plot_optimization_history(study, target_name=metric),
    )
    attempt(
        IMPORTANCES,
        _importance_problem(searched, len(complete)),
        lambda: optuna_plots.plot_param_importances(study, target_name=metric),
    )
    if set(CONTOUR_PARAMS) <= set(searched):  # a study of DM(BCE) that tunes both
        attempt(
            CONTOUR,
            _contour_problem(complete),
            lambda: optuna_plots.plot_contour(study, list(CONTOUR_PARAMS), target_name=metric),
        )
    return plots


def _searched(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The parameters the trials searched over: those whose distribution has several values."""
    names = {
        name
        for trial in trials
        for name, distribution in trial.distributions.items()
        if not distribution.single()
    }
    return sorted(names)


def _importance_problem(searched: list[str], completed: int) -> str | None:
    if len(searched) < 2:
        return f"needs 2 searched parameters, the study searched {', '.join(searched) or 'none'}"
    if completed < MIN_IMPORTANCE_TRIALS:
        return f"needs at least {MIN_IMPORTANCE_TRIALS} completed trials, the study has {completed}"
    return None


def _contour_problem(trials: list[optuna.trial.FrozenTrial]) -> str | None:
    for name in CONTOUR_PARAMS:
        values = {trial.params[name] for trial in trials if name in trial.params}
        if len(values) < 2:
            return f"needs 2 values of {name} in completed trials, the study has {len(values)}"
    return None


def _agg_unless_chosen() -> None:
    """Matplotlib's Agg backend (no display), unless this process loaded pyplot before.

    A notebook's own backend is left as it is: the figures drawn here are closed, never shown.
    """
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def _draw(draw: Callable[[], Any], path: AnyPath) -> str | None:
    """Draw with pyplot and save ``path`` as PNG; None, or why it failed."""
    import matplotlib
    import matplotlib.pyplot as plt

    # Optuna sets a style (ggplot): rc_context gives the process's settings back.
    with _DRAWING, matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental", "few trials": the skips say enough
        before = set(plt.get_fignums())
        try:
            drawn = draw()
            axes = drawn.flat[0] if hasattr(drawn, "flat") else drawn
            buffer = io.BytesIO()
            axes.figure.savefig(buffer, format="png", bbox_inches="tight")
        except Exception as error:  # a plot never fails the sweep
            return f"{type(error).__name__}: {error}"
        finally:
            for number in set(plt.get_fignums()) - before:  # those drawn here, none other
                plt.close(number)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    except OSError as error:
        return f"{path}: {error.strerror or error}"
    return None
