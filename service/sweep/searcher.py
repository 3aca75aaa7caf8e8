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

Studies live in an Optuna RDB storage, named ``<sweep id>:<cell id>``, so they outlive the driver
and open with ``optuna.load_study``. Where (``StudyStorage``; ``service.sweep.engine`` chooses):

* ``optuna.db`` in the sweep's folder by default (a local run);
* the database ``DMSWEEP_OPTUNA_STORAGE`` names in the driver's environment, or the file
  ``DMSWEEP_OPTUNA_STORAGE_FILE`` names holds (a mounted secret): PostgreSQL on a cluster, whose
  sweep folders are on a network share where SQLite's locking cannot be trusted. The driver of a
  service's sweep is a Ray job on the head and inherits the head's environment; the service
  never passes the URL on. Its password must reach no file: Tune pickles the searcher into the
  sweep's folder, so such a URL is not pickled but read from the environment again whenever
  the studies are opened (a resumed sweep too); only its redacted form is kept.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import TrialState
from ray.tune.search import Searcher
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from service.spec.search import Range, redact_url

logger = logging.getLogger(__name__)

STORAGE_VAR = "DMSWEEP_OPTUNA_STORAGE"
STORAGE_FILE_VAR = "DMSWEEP_OPTUNA_STORAGE_FILE"
# The drivers installed with dmsweep: psycopg 3 and SQLite. A bare postgresql:// is psycopg2 in
# SQLAlchemy 2.0 (which dmsweep allows), psycopg 3 only from 2.1: the driver must be named.
DRIVERS = ("postgresql+psycopg", "sqlite")
EXAMPLE_URL = "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE"
# Any fixed number: the key of the PostgreSQL advisory lock under which Optuna's tables are made.
SCHEMA_LOCK_KEY = 0x0D35_0A7A
CONNECT_TIMEOUT_S = 10  # seconds to reach the PostgreSQL of the studies before giving up
# A study's user attribute naming the sweep (its folder) whose study it is.
OWNER_ATTR = "dmsweep.sweep_folder"


class OptunaStorageError(ValueError):
    """Where the studies go is misconfigured, or a study is another sweep's; says which."""


def _checked(url: str, origin: str) -> str:
    """``url`` if dmsweep can open it; else ``OptunaStorageError`` naming ``origin``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The value itself is not shown: it may be a password pasted in the wrong place.
        raise OptunaStorageError(
            f"{origin} is not a database URL; give one like {EXAMPLE_URL}"
        ) from None
    if parsed.drivername not in DRIVERS:
        hint = ""
        if parsed.get_backend_name() == "postgresql":
            hint = " (dmsweep installs psycopg 3 only: write postgresql+psycopg://)"
        raise OptunaStorageError(
            f"{origin} names the driver {parsed.drivername!r}{hint}; allowed: "
            f"{', '.join(DRIVERS)}, e.g. {EXAMPLE_URL}"
        )
    if parsed.drivername == "sqlite" and not parsed.database:
        raise OptunaStorageError(f"{origin} names an in-memory SQLite; give a file, sqlite:///PATH")
    return url


def url_from_env(env: Mapping[str, str]) -> str | None:
    """The URL of ``DMSWEEP_OPTUNA_STORAGE``, else of the file ``DMSWEEP_OPTUNA_STORAGE_FILE``.

    None when neither is set; ``OptunaStorageError`` naming the variable when it is unusable.
    The variable wins over the file, as with the service's ``*_FILE`` tokens.
    """
    if (env.get(STORAGE_VAR) or "").strip():
        return _checked(env[STORAGE_VAR].strip(), STORAGE_VAR)
    if (env.get(STORAGE_FILE_VAR) or "").strip():
        path = Path(env[STORAGE_FILE_VAR].strip())
        try:
            url = path.read_text().strip()
        except OSError as error:
            raise OptunaStorageError(
                f"{STORAGE_FILE_VAR}={path}: {error.strerror or error}"
            ) from None
        if not url:
            raise OptunaStorageError(f"{STORAGE_FILE_VAR}={path}: the file is empty")
        return _checked(url, f"the URL in {STORAGE_FILE_VAR}={path}")
    return None


@dataclass(frozen=True)
class StudyStorage:
    """Where a sweep's studies are; pickled with the searcher, so it holds no secret.

    ``url`` is the URL itself when it may be stored (a SQLite file); None means the URL is read
    from the driver's environment (``url_from_env``) whenever the studies are opened. ``shown``
    is the URL without its password, for messages.
    """

    shown: str
    url: str | None = None

    @classmethod
    def file(cls, url: str) -> StudyStorage:
        """A SQLite file (the sweep folder's ``optuna.db``, a local spec's ``search.storage``)."""
        return cls(shown=url, url=url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StudyStorage | None:
        """The storage the environment names, or None (see ``url_from_env``)."""
        url = url_from_env(os.environ if env is None else env)
        return None if url is None else cls(shown=redact_url(url))

    def resolve(self, env: Mapping[str, str] | None = None) -> str:
        """The URL to open now; a URL from the environment is read from it again."""
        if self.url is not None:
            return self.url
        url = url_from_env(os.environ if env is None else env)
        if url is None:
            raise OptunaStorageError(
                f"this sweep keeps its Optuna studies in {self.shown}, which {STORAGE_VAR} (or "
                f"{STORAGE_FILE_VAR}) named when it started; set it again in the environment "
                "of the sweep's driver (the Ray head, for the sweep service) to go on with it"
            )
        if redact_url(url) != self.shown:
            logger.warning(
                "%s now names %s; this sweep's studies were in %s",
                STORAGE_VAR,
                redact_url(url),
                self.shown,
            )
        return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``; on PostgreSQL, its tables made under an advisory lock.

    Optuna creates its tables without a lock; the first drivers of several sweeps on a new
    database raced (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``).
    """
    if make_url(url).get_backend_name() != "postgresql":
        return optuna.storages.RDBStorage(url)
    timeout = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **timeout)
    try:
        with engine.connect() as connection:
            key = {"key": SCHEMA_LOCK_KEY}
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=timeout)
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        engine.dispose()


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
        storage_url: str | StudyStorage,
        sampler: str,
        metric: str,
        mode: str,
        owner: str | None = None,
    ) -> None:
        """``storage_url``: a URL kept as it is (no secret in it), or a ``StudyStorage``.

        ``owner`` (the sweep's folder) is stored with each study; a study of the same name that
        another owner holds (two sweeps of one id on one database) is refused.
        """
        super().__init__(metric=metric, mode=mode)
        self._plans = {plan.name: plan for plan in plans}
        if isinstance(storage_url, str):
            storage_url = StudyStorage.file(storage_url)
        self._where = storage_url
        self._owner = owner
        self._sampler = sampler
        self._issued = {plan.name: 0 for plan in plans}
        self._asked: dict[str, tuple[str, int]] = {}  # Tune trial id -> (study, trial number)
        self._done: set[str] = set()
        self._last_step: dict[str, int] = {}  # Tune trial id -> the last step reported
        self._studies: dict[str, optuna.Study] = {}
        self._storage: optuna.storages.RDBStorage | None = None

    # Studies and storages are reopened after unpickling (Tuner.restore pickles the searcher);
    # the open storage holds the URL, password and all, so it is never pickled.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_studies"], state["_storage"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A searcher pickled before StudyStorage kept its URL as ``_storage_url``.
        if "_storage_url" in state:
            state["_where"] = StudyStorage.file(state.pop("_storage_url"))
        state.setdefault("_owner", None)
        self.__dict__.update(state)

    def _open(self, name: str) -> optuna.Study:
        if name not in self._studies:
            if self._storage is None:
                self._storage = open_storage(self._where.resolve())
            study = optuna.create_study(
                storage=self._storage,
                study_name=name,
                sampler=make_sampler(self._sampler, self._plans[name]),
                direction="maximize" if self.mode == "max" else "minimize",
                load_if_exists=True,
            )
            self._claim(study)
            self._studies[name] = study
        return self._studies[name]

    def _claim(self, study: optuna.Study) -> None:
        """Mark ``study`` as this sweep's, or refuse it when another sweep's mark is on it."""
        if self._owner is None:
            return
        holder = study.user_attrs.get(OWNER_ATTR)
        if holder is None:
            study.set_user_attr(OWNER_ATTR, self._owner)
        elif holder != self._owner:
            raise OptunaStorageError(
                f"the Optuna study {study.study_name!r} in {self._where.shown} belongs to the "
                f"sweep in {holder}, not to {self._owner}: two sweeps of one id share that "
                "database (two services, or a local run, on one DMSWEEP_OPTUNA_STORAGE); give "
                "each its own database"
            )

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
            self.__setstate__(pickle.load(source))
