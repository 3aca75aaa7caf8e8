"""The folder of one sweep: its spec, its state, one record per finished trial, logs, reports.

Every run of a spec is a new sweep, ``<storage_path>/<name>-<UTC timestamp>/``::

    spec.yaml            the spec as submitted (what ``dmsweep resume`` runs again)
    sweep.json           id, creation time, tracking (MLflow experiment and parent run), Ray
    trials/<id>.json     one record per finished trial: identity, status, metrics or error
    logs/<id>.log        one log per trial: epochs, and the traceback of a failure
    train/<id>/          Ray Train's runs: checkpoints of each trial
    optuna.db            the Optuna studies (with a search section, SQLite by default)
    results.parquet, report.md, report.html, gains.png    written at the end of the sweep
    <Ray Tune's experiment state>                           what ``Tuner.restore`` reads

Trial records are written by the trial itself, so the results of a sweep whose driver died are
still on disk, and a report can be made at any time.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SPEC_FILE = "spec.yaml"
STATE_FILE = "sweep.json"


def new_sweep_id(name: str, storage_path: Path, now: datetime | None = None) -> str:
    """``<name>-<UTC timestamp>``, with ``-2``, ``-3``, ... when that folder already exists."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    sweep_id = f"{name}-{stamp}"
    suffix = 2
    while (storage_path / sweep_id).exists():
        sweep_id = f"{name}-{stamp}-{suffix}"
        suffix += 1
    return sweep_id


def write_json_atomically(path: Path, value: Any) -> None:
    """Write ``value`` as JSON so that a reader never sees half a file (a kill mid-write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        json.dump(value, out, indent=2, default=str)
    os.replace(temporary, path)


@dataclass(frozen=True)
class SweepFolder:
    """Paths inside one sweep's folder."""

    path: Path

    @property
    def sweep_id(self) -> str:
        """The folder's name is the sweep id."""
        return self.path.name

    @property
    def spec_file(self) -> Path:
        """The spec as submitted."""
        return self.path / SPEC_FILE

    @property
    def state_file(self) -> Path:
        """``sweep.json``."""
        return self.path / STATE_FILE

    @property
    def trials_dir(self) -> Path:
        """One JSON record per finished trial."""
        return self.path / "trials"

    @property
    def logs_dir(self) -> Path:
        """One log per trial."""
        return self.path / "logs"

    @property
    def train_dir(self) -> Path:
        """Ray Train's storage path: one run (with checkpoints) per trial."""
        return self.path / "train"

    @property
    def optuna_url(self) -> str:
        """The default Optuna storage: a SQLite file in the folder."""
        return f"sqlite:///{self.path / 'optuna.db'}"

    def log_file(self, trial_id: str) -> Path:
        """The log of one trial."""
        return self.logs_dir / f"{trial_id}.log"

    def record_file(self, trial_id: str) -> Path:
        """The record of one finished trial."""
        return self.trials_dir / f"{trial_id}.json"

    def read_state(self) -> dict[str, Any]:
        """``sweep.json``; a ValueError naming the folder when it is not a sweep."""
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"{self.path} is not a sweep folder: {STATE_FILE} is missing"
            ) from None

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace ``sweep.json``."""
        write_json_atomically(self.state_file, state)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into ``sweep.json``; the new state."""
        state = {**self.read_state(), **changes}
        self.write_state(state)
        return state

    def write_record(self, trial_id: str, record: dict[str, Any]) -> None:
        """The record of a finished trial (replaces an earlier one of the same trial)."""
        write_json_atomically(self.record_file(trial_id), record)

    def read_record(self, trial_id: str) -> dict[str, Any] | None:
        """The record of one trial, or None before it finished."""
        try:
            return json.loads(self.record_file(trial_id).read_text())
        except FileNotFoundError:
            return None

    def records(self) -> list[dict[str, Any]]:
        """Every trial record, in the order the trials were created (Tune's trial ids)."""
        if not self.trials_dir.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.trials_dir.glob("*.json"))]


def find_sweep(id_or_path: str, storage_path: str | Path = "./runs") -> SweepFolder:
    """The sweep named by a folder path, or by its id under ``storage_path``."""
    candidates = [Path(id_or_path), Path(storage_path) / id_or_path]
    for candidate in candidates:
        if (candidate / STATE_FILE).is_file():
            return SweepFolder(candidate.resolve())
    known = []
    root = Path(storage_path)
    if root.is_dir():
        known = sorted(p.name for p in root.iterdir() if (p / STATE_FILE).is_file())
    hint = f"; sweeps in {root}: {', '.join(known[-10:])}" if known else f"; {root} has none"
    raise ValueError(f"no sweep {id_or_path!r}: not a sweep folder, nor a sweep id{hint}")
