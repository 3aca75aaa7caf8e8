"""The folder of one sweep: its spec, its state, one record per finished trial, logs, reports.

Every run of a spec is a new sweep, ``<storage_path>/<name>-<UTC timestamp>/``::

    spec.yaml            the spec as submitted (what ``dmsweep resume`` runs again)
    sweep.json           SweepInfo: id, status, tracking (MLflow experiment, parent run), counts
    trials/<id>.json     one record per finished trial: identity, status, metrics or error
    logs/<id>.log        one log per trial: epochs, and the traceback of a failure
    train/<id>/          each trial's checkpoints (its own, or its Ray Train run's)
    errors/<id>.json     a failure a retry would repeat, left by a worker for its trial's driver
    optuna.db            the Optuna studies (with a search section, SQLite by default)
    optuna_plots/<cell id>/   with a search: Optuna's plots of each cell's study, at the end
    results.parquet, report.md, report.html, gains.png    written at the end of the sweep
    best_settings.yaml   with a search: each cell's best setting
    tracking_outbox/     MLflow writes that MLflow did not take yet (service.tracking.outbox)
    <Ray Tune's experiment state>                           what ``Tuner.restore`` reads

Trial records are written by the trial itself, so the results of a sweep whose driver died are
still on disk, and a report can be made at any time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import yaml

from service.results.records import Failure, SweepInfo, TrialRecord, TrialState
from service.spec.model import SweepSpec
from service.spec.reading import spec_from_dict
from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath, absolute, as_path, matching, write_whole

SPEC_FILE = "spec.yaml"
STATE_FILE = "sweep.json"


def new_sweep_id(
    name: str,
    storage_path: AnyPath,
    now: datetime | None = None,
    taken: Callable[[str], bool] = lambda sweep_id: False,
) -> str:
    """``<name>-<UTC timestamp>``, with ``-2``, ``-3``, ... when that id is in use.

    In use: its folder exists under ``storage_path``, or ``taken`` says so (the service's store).
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    sweep_id = f"{name}-{stamp}"
    suffix = 2
    while (storage_path / sweep_id).exists() or taken(sweep_id):
        sweep_id = f"{name}-{stamp}-{suffix}"
        suffix += 1
    return sweep_id


def write_json_atomically(path: AnyPath, value: Any) -> None:
    """Write ``value`` as JSON so that a reader never sees half a file (a kill mid-write)."""
    write_whole(path, json.dumps(value, indent=2, default=str))


# Where each file and folder of the layout (module docstring) lies inside a sweep's folder.
_LAYOUT = {
    "spec_file": SPEC_FILE,  # the spec as submitted
    "state_file": STATE_FILE,  # SweepInfo
    "trials_dir": "trials",  # one TrialRecord per finished trial
    "logs_dir": "logs",  # one log per trial
    "train_dir": "train",  # one folder of checkpoints per trial
    "errors_dir": "errors",  # Failures a retry would repeat, left by workers
    "best_settings_file": "best_settings.yaml",  # with a search: each cell's best setting
    "study_plots_dir": "optuna_plots",  # with a search: Optuna's plots (tracking.study_plots)
    "tracking_outbox_dir": "tracking_outbox",  # MLflow writes to send when MLflow is back
}


@dataclass(frozen=True)
class SweepFolder:
    """One sweep's folder: the one owner of its files (the layout in the module docstring).

    ``path`` is a folder of this machine (or a shared volume), or a bucket prefix
    (``BucketPath``): the layout and every file's contents are the same on both.
    """

    path: AnyPath
    spec_file: AnyPath = field(init=False, repr=False, compare=False)
    state_file: AnyPath = field(init=False, repr=False, compare=False)
    trials_dir: AnyPath = field(init=False, repr=False, compare=False)
    logs_dir: AnyPath = field(init=False, repr=False, compare=False)
    train_dir: AnyPath = field(init=False, repr=False, compare=False)
    errors_dir: AnyPath = field(init=False, repr=False, compare=False)
    best_settings_file: AnyPath = field(init=False, repr=False, compare=False)
    study_plots_dir: AnyPath = field(init=False, repr=False, compare=False)
    tracking_outbox_dir: AnyPath = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, relative in _LAYOUT.items():
            object.__setattr__(self, name, self.path / relative)

    # Pickled (to Ray's workers, with Tune's experiment) as its path: the layout is this code's.
    def __reduce__(self) -> tuple[type[SweepFolder], tuple[AnyPath]]:
        return (SweepFolder, (self.path,))

    @property
    def on_bucket(self) -> bool:
        """Whether the folder is a bucket prefix (no SQLite file can live there)."""
        return isinstance(self.path, BucketPath)

    @property
    def sweep_id(self) -> str:
        """The folder's name is the sweep id."""
        return self.path.name

    @property
    def optuna_url(self) -> str:
        """The default Optuna storage: a SQLite file in the folder (not on a bucket)."""
        if self.on_bucket:
            raise ValueError(
                f"sweep folder {self.path} is on a bucket, where no SQLite file can live: give "
                "the sweep's driver a database for its studies (DMSWEEP_OPTUNA_STORAGE)"
            )
        return f"sqlite:///{self.path / 'optuna.db'}"

    def error_file(self, trial_id: str) -> AnyPath:
        """Where a worker leaves a deterministic failure for the trial's driver."""
        return self.errors_dir / f"{trial_id}.json"

    def write_failure(self, trial_id: str, failure: Failure) -> None:
        """Leave a failure that a retry would repeat for the trial's driver (``read_failure``)."""
        write_json_atomically(self.error_file(trial_id), asdict(failure))

    def read_failure(self, trial_id: str) -> Failure | None:
        """The failure a worker of the trial left, or None."""
        try:
            return Failure(**json.loads(self.error_file(trial_id).read_text()))
        except FileNotFoundError:
            return None

    def read_spec(self) -> SweepSpec:
        """The spec the sweep runs (``spec.yaml``)."""
        return spec_from_dict(yaml.safe_load(self.spec_file.read_text()))

    def log_file(self, trial_id: str) -> AnyPath:
        """The log of one trial."""
        return self.logs_dir / f"{trial_id}.log"

    def record_file(self, trial_id: str) -> AnyPath:
        """The record of one finished trial."""
        return self.trials_dir / f"{trial_id}.json"

    def read_state(self) -> SweepInfo:
        """``sweep.json``; a ValueError naming the folder when it is not a sweep."""
        try:
            return SweepInfo.from_json(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            raise ValueError(
                f"{self.path} is not a sweep folder: {STATE_FILE} is missing"
            ) from None

    def write_state(self, state: SweepInfo) -> None:
        """Replace ``sweep.json``."""
        write_json_atomically(self.state_file, asdict(state))

    def update_state(self, **changes: Any) -> SweepInfo:
        """Change fields of ``sweep.json`` (``SweepInfo``'s); the new state."""
        state = replace(self.read_state(), **changes)
        self.write_state(state)
        return state

    def write_record(self, record: TrialRecord) -> None:
        """The record of a finished trial (replaces an earlier one of the same trial)."""
        write_json_atomically(self.record_file(record.trial_id), record.to_row())

    def read_record(self, trial_id: str) -> TrialRecord | None:
        """The record of one trial, or None before it finished."""
        try:
            return TrialRecord.from_row(json.loads(self.record_file(trial_id).read_text()))
        except FileNotFoundError:
            return None

    def records(self) -> list[TrialRecord]:
        """Every trial record, in the order the trials were created (Tune's trial ids)."""
        if not self.trials_dir.is_dir():
            return []
        return [
            TrialRecord.from_row(json.loads(p.read_text()))
            for p in matching(self.trials_dir, "*.json")
        ]

    def started_trials(self) -> list[str]:
        """Ids of the trials that have started (each has a log), sorted."""
        return sorted(p.stem for p in self.logs_dir.glob("*.log")) if self.logs_dir.is_dir() else []

    def find_trial(self, text: str) -> str:
        """The trial whose id or name is ``text``, else the one whose id or name starts with it.

        A LookupError names the matches when there is not exactly one.

        The command line's ``dmsweep logs`` and the service's ``/logs?trial=`` both look trials
        up this way.
        """
        names = {r.trial_id: r.name for r in self.records()}
        known = sorted(set(self.started_trials()) | set(names))
        exact = [t for t in known if text in (t, names.get(t))]
        if len(exact) == 1:  # a whole name may also begin another (.../seed1, .../seed10)
            return exact[0]
        matches = [t for t in known if t.startswith(text) or names.get(t, "").startswith(text)]
        if len(matches) != 1:
            found = ", ".join(matches) if matches else "none"
            raise LookupError(f"trial {text!r} of sweep {self.sweep_id} matches {found}")
        return matches[0]

    def progress(self, metric: str, mode: str = "max") -> Progress:
        """Trials done, started but unfinished, failed and pruned, and the best result so far."""
        records = self.records()
        finished = {r.trial_id for r in records}
        sign = 1 if mode == "max" else -1
        scored = [
            (value, r.name)
            for r in records
            if r.status == TrialState.SUCCEEDED and (value := r.metric(metric)) is not None
        ]
        top = max(scored, key=lambda scored_trial: sign * scored_trial[0]) if scored else None
        return Progress(
            done=len(records),
            unfinished=len(set(self.started_trials()) - finished),
            failed=sum(r.status == TrialState.FAILED for r in records),
            pruned=sum(r.status == TrialState.PRUNED for r in records),
            best=None if top is None else (top[1], float(top[0])),
        )


@dataclass(frozen=True)
class Progress:
    """A sweep's trials as its folder records them."""

    done: int
    unfinished: int  # started (logged) and not finished: running, or lost with their driver
    failed: int
    pruned: int
    best: tuple[str, float] | None  # (trial name, metric value)


def find_sweep(id_or_path: str, storage_path: str | AnyPath = "./runs") -> SweepFolder:
    """The sweep named by a folder path (or bucket URI), or by its id under ``storage_path``."""
    root = as_path(storage_path)
    candidates = [as_path(id_or_path)]
    if "://" not in id_or_path:
        candidates.append(root / id_or_path)
    for candidate in candidates:
        if (candidate / STATE_FILE).is_file():
            return SweepFolder(absolute(candidate))
    known = []
    if root.is_dir():
        known = sorted(p.name for p in root.iterdir() if (p / STATE_FILE).is_file())
    hint = f"; sweeps in {root}: {', '.join(known[-10:])}" if known else f"; {root} has none"
    raise ValueError(f"no sweep {id_or_path!r}: not a sweep folder, nor a sweep id{hint}")
