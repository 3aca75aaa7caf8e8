"""Optuna search for a sweep: one study per cell, inside one Ray Tune experiment.

Ray Tune runs one searcher per experiment, and the paper tunes each cell on its own (Sec. 4.5:
eta, xi and t per method family), so ``CellStudies`` holds one Optuna study per cell (and seed,
when the spec has several), hands out settings round-robin over the studies that still have
budget, and tells each study what its trials did:

* a trial that reached its last epoch is COMPLETE with the metric's last value;
* a trial that ASHA stopped early is PRUNED, with every epoch's value as an intermediate value
  (Ray's own ``OptunaSearch`` records it COMPLETE with its last value, so TPE would rank a short
  run's early accuracy beside full runs' final accuracy);
* a trial that failed is FAIL.

Studies live in an Optuna RDB storage (a SQLite file in the sweep's folder by default), named
``<sweep id>:<cell id>``, so they outlive the driver and open with ``optuna.load_study``.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState
from ray.tune.search import Searcher

from service.spec.search import Range

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPlan:
    """One study: which cell and seed it tunes, over what, for how many trials."""

    name: str
    cell: str
    seed: int
    space: dict[str, list[float] | Range]
    budget: int
    epochs: int
    sampler_seed: int


def distributions(space: dict[str, list[float] | Range]) -> dict[str, BaseDistribution]:
    """Optuna distributions of a spec's search space."""
    out: dict[str, BaseDistribution] = {}
    for name, values in space.items():
        if isinstance(values, Range):
            out[name] = FloatDistribution(values.low, values.high, log=values.log)
        else:
            out[name] = CategoricalDistribution(values)
    return out


def make_sampler(kind: str, plan: StudyPlan) -> optuna.samplers.BaseSampler:
    """Grid (every setting once) or TPE, seeded per study so a sweep is repeatable."""
    if kind == "grid":
        # The spec's model allows the grid sampler only lists of values (no ranges).
        grid = {
            name: list(values) for name, values in plan.space.items() if isinstance(values, list)
        }
        return optuna.samplers.GridSampler(grid, seed=plan.sampler_seed)
    return optuna.samplers.TPESampler(seed=plan.sampler_seed)


class CellStudies(Searcher):
    """A Ray Tune searcher over one Optuna study per cell; see the module docstring."""

    def __init__(
        self,
        plans: list[StudyPlan],
        *,
        storage_url: str,
        sampler: str,
        metric: str,
        mode: str,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._plans = {plan.name: plan for plan in plans}
        self._storage_url = storage_url
        self._sampler = sampler
        self._issued = {plan.name: 0 for plan in plans}
        self._asked: dict[str, tuple[str, int]] = {}  # Tune trial id -> (study, trial number)
        self._done: set[str] = set()
        self._last_step: dict[str, int] = {}  # Tune trial id -> the last step reported
        self._studies: dict[str, optuna.Study] = {}
        self._storage: optuna.storages.RDBStorage | None = None

    # Studies and storages are reopened after unpickling (Tuner.restore pickles the searcher).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_studies"], state["_storage"] = {}, None
        return state

    def _open(self, name: str) -> optuna.Study:
        if name not in self._studies:
            if self._storage is None:
                self._storage = optuna.storages.RDBStorage(self._storage_url)
            self._studies[name] = optuna.create_study(
                storage=self._storage,
                study_name=name,
                sampler=make_sampler(self._sampler, self._plans[name]),
                direction="maximize" if self.mode == "max" else "minimize",
                load_if_exists=True,
            )
        return self._studies[name]

    def _trial(self, trial_id: str) -> tuple[optuna.Study, optuna.trial.Trial]:
        name, number = self._asked[trial_id]
        study = self._open(name)
        assert self._storage is not None  # opened with the study
        study_id = self._storage.get_study_id_from_name(name)
        trial_id_in_storage = self._storage.get_trial_id_from_study_id_trial_number(
            study_id, number
        )
        return study, optuna.trial.Trial(study, trial_id_in_storage)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Tune's metric and mode, when given there rather than here."""
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    # Ray 2.60's annotation leaves out Searcher.FINISHED, the string its own loop checks for.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        """The next setting: from the study that has handed out the fewest so far."""
        open_plans = [p for p in self._plans.values() if self._issued[p.name] < p.budget]
        if not open_plans:
            return Searcher.FINISHED
        plan = min(open_plans, key=lambda p: self._issued[p.name])
        trial = self._open(plan.name).ask(distributions(plan.space))
        self._issued[plan.name] += 1
        self._asked[trial_id] = (plan.name, trial.number)
        return {"cell": plan.cell, "seed": plan.seed, "params": dict(trial.params)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each epoch's value, as the trial's intermediate value at step = epoch."""
        if trial_id not in self._asked or self.metric not in result:
            return
        _, trial = self._trial(trial_id)
        self._report(trial_id, trial, float(result[self.metric]), int(result.get("epoch", 0)))

    def _report(self, trial_id: str, trial: optuna.Trial, value: float, step: int) -> None:
        # Tune hands the last result to on_trial_complete, and sometimes to on_trial_result
        # first: Optuna keeps the first value of a step and warns of the second.
        if self._last_step.get(trial_id) != step:
            trial.report(value, step=step)
            self._last_step[trial_id] = step

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """COMPLETE, PRUNED (stopped before its last epoch) or FAIL; see the module docstring."""
        if trial_id not in self._asked or trial_id in self._done:
            return
        self._done.add(trial_id)
        study, trial = self._trial(trial_id)
        plan = self._plans[self._asked[trial_id][0]]
        result = result or {}
        value = result.get(self.metric)
        if value is not None and "epoch" in result:
            self._report(trial_id, trial, float(value), int(result["epoch"]))
        try:
            if error or (value is None and "epoch" in result):
                study.tell(trial, state=TrialState.FAIL)
            elif value is None or int(result.get("epoch", 0)) < plan.epochs:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, float(value))
        except (ValueError, RuntimeError) as failure:  # already finished (a resumed sweep)
            logger.warning("optuna trial of %s not updated: %s", trial_id, failure)

    def save(self, checkpoint_path: str) -> None:
        """Tune saves the searcher with the experiment (``Tuner.restore`` reads it back)."""
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__getstate__(), out)

    def restore(self, checkpoint_path: str) -> None:
        """Read what ``save`` wrote."""
        with open(checkpoint_path, "rb") as source:
            self.__dict__.update(pickle.load(source))
