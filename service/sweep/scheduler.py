"""ASHA per study: a cell's trials are stopped early only by comparison with that cell's trials.

Ray Tune runs one scheduler per experiment, and a sweep tunes all its cells in one experiment
(``service.sweep.searcher.CellStudies``). One ASHA over all of them would compare, at each rung, a
CutMix trial with Mixup trials and stop every trial of a cell whose accuracy is lower overall,
so that cell would have no finished setting at all. ``StudyASHA`` keeps one Ray
``ASHAScheduler`` per (cell, seed) and hands each trial's events to its own.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class StudyASHA(FIFOScheduler):
    """One ``ASHAScheduler(**options)`` per (cell, seed) of the trials' configs."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._options = options
        self._metric = options["metric"]
        self._mode = options["mode"]
        self._by_study: dict[tuple[str, int], ASHAScheduler] = {}

    def _asha(self, trial: Any) -> ASHAScheduler:
        key = (trial.config["cell"], int(trial.config["seed"]))
        if key not in self._by_study:
            self._by_study[key] = ASHAScheduler(**self._options)
        return self._by_study[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Metric and mode come with the options; Tune's, when given, must agree."""
        return metric in (None, self._metric) and mode in (None, self._mode)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """A new trial joins its study's ASHA."""
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Continue or stop, by the rungs of the trial's own study."""
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """The last result counts in the trial's study's rungs."""
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """A trial removed before it finished."""
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        """Each study's ASHA."""
        return "\n".join(f"{k}: {a.debug_string()}" for k, a in self._by_study.items())

    def save(self, checkpoint_path: str) -> None:
        """Tune saves the scheduler with the experiment."""
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__, out)

    def restore(self, checkpoint_path: str) -> None:
        """Read what ``save`` wrote."""
        with open(checkpoint_path, "rb") as source:
            self.__dict__.update(pickle.load(source))
