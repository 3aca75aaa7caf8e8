"""MLflow writes of a sweep that MLflow did not take, kept in the sweep's folder, sent later.

Every MLflow call of the engine is best-effort (``service.tracking.store.best_effort``: bounded
waiting, never raised into Ray Tune, whose callbacks' errors end the sweep). What still fails is
written here, one JSON file per write in ``tracking_outbox/`` of the sweep folder, by whichever
process made it: a trial's rank 0 (its child run, and metrics left when it closes it), the
sweep's driver (closing stopped trials' runs, the parent run and its report). The sweep's
driver sends them again while the sweep runs (``SweepCallback``, at most every
``FLUSH_EVERY_S``), at its end and when it is resumed; a write is removed once MLflow took it.
Each write is idempotent (runs are found by their tags before one is created), so a write sent
twice (a driver killed after sending, before removing) does no harm.

Writes (``op``):

* ``sweep_run``: the parent run that could not be created with the sweep (MLflow was down).
  Its trials ran untracked; once it exists, each finished trial gets a child run with its
  record's final metrics (``backfill``).
* ``trial_run``: a child run its trial could not create; created later, with the
  trial's final metrics and state once it has a record.
* ``metrics``: metric values of a run (a worker's unsent epochs).
* ``close_run``: tags and the end state of a trial's run.
* ``finish_sweep``: the parent run's report, Optuna's plots, counts and end state.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath, as_path
from service.tracking.store import LASTING_ERRORS, Tracking, quick_http, retrying
from service.tracking.uri import with_credentials

FLUSH_EVERY_S = 30.0
# on a child run made after its trial ran untracked: it holds the final metrics only
BACKFILLED_TAG = "dmsweep.backfilled"

Write = dict[str, Any]
# (trial id) -> (state, final metrics, last epoch) of a finished trial, or None before then
RecordOf = Callable[[str], "tuple[str, dict[str, float], int] | None"]


class Outbox:
    """The pending MLflow writes of one sweep (a folder of JSON files)."""

    def __init__(self, folder: str | AnyPath) -> None:
        self.folder = as_path(folder)

    def add(self, write: Write) -> None:
        """Keep one write (atomically: a reader never sees half of it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        if isinstance(self.folder, BucketPath):  # an object is written whole, never renamed
            (self.folder / f"{name}.json").write_text(json.dumps(write, default=str))
            return
        temporary = self.folder / f".{name}.tmp"
        temporary.write_text(json.dumps(write, default=str))
        temporary.replace(self.folder / f"{name}.json")

    def _set_aside(self, path: AnyPath, reason: str) -> None:
        failed = self.folder / "failed"
        failed.mkdir(exist_ok=True)
        (failed / f"{path.stem}.reason.txt").write_text(reason + "\n")
        target = failed / path.name
        if isinstance(path, BucketPath) and isinstance(target, BucketPath):
            path.replace(target)  # a copy, then the delete: an object store renames nothing
        elif isinstance(path, Path) and isinstance(target, Path):
            path.replace(target)

    def pending(self) -> list[AnyPath]:
        """The writes waiting, oldest first."""
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def flush(
        self,
        tracking: Tracking | None,
        record_of: RecordOf,
        on_sweep_run: Callable[[Tracking], None],
        log: Callable[[str], None],
    ) -> Tracking | None:
        """Send what waits, oldest first, until MLflow refuses one; the sweep's tracking.

        ``on_sweep_run`` is told when a late parent run was made (the caller stores it).
        """
        for path in self.pending():
            try:
                write = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile (another flush)
            try:
                with quick_http():
                    done, tracking = _send(write, tracking, record_of, on_sweep_run)
            except Exception as error:
                reason = f"{type(error).__name__}: {str(error)[:300]}"
                if not _lasting(error):
                    log(f"tracking: {len(self.pending())} MLflow writes wait for MLflow: {reason}")
                    return tracking
                # Sending it again would fail again and hold every later write behind it.
                self._set_aside(path, reason)
                log(f"tracking: an MLflow write was refused for good ({reason}); kept in failed/")
                continue
            if done:
                path.unlink(missing_ok=True)
        return tracking


def _lasting(error: Exception) -> bool:
    """Whether MLflow (or the write itself) refused for good, as opposed to being away.

    A 4xx answer other than 429 (a deleted run, an invalid value), a write this version cannot
    read, or a file-system error of the local store.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(error, (KeyError, ValueError, TypeError, *LASTING_ERRORS)):
        return True
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return 400 <= status < 500 and status != 429
    return False


def _send(
    write: Write,
    tracking: Tracking | None,
    record_of: RecordOf,
    on_sweep_run: Callable[[Tracking], None],
) -> tuple[bool, Tracking | None]:
    """Send one write; whether it is done (a trial run waits for its trial's record)."""
    from service.tracking.sweep_runs import finish_sweep, start_sweep
    from service.tracking.trial_runs import (
        create_child_run,
        end_trial_run,
        find_trial_run,
    )

    op = write["op"]
    if op == "sweep_run":
        if tracking is None:
            tracking = start_sweep(
                uri=with_credentials(write["uri"]),
                experiment=write["experiment"],
                sweep_id=write["sweep_id"],
                spec_file=as_path(write["spec_file"]),
                tags=write["tags"],
                artifact_location=write.get("artifact_location"),
                attempts=1,
            )
            on_sweep_run(tracking)
        return True, tracking
    if tracking is None:
        raise RuntimeError("the sweep's parent run does not exist yet")
    client = tracking.client()
    if op == "trial_run":
        trial_id = write["trial_id"]
        run_id = find_trial_run(tracking, trial_id, attempts=1)
        if run_id is None:
            run_id = create_child_run(tracking, write, attempts=1)
        record = record_of(trial_id)
        if record is None:
            return False, tracking  # still training: closed once it has a record
        state, metrics, step = record
        _log_metrics(client, run_id, [[k, v, None, step] for k, v in metrics.items()])
        error = None if state in ("succeeded", "pruned") else "the trial failed"
        end_trial_run(tracking, run_id, error, attempts=1)
        return True, tracking
    if op == "metrics":
        _log_metrics(client, write["run_id"], write["metrics"])
        return True, tracking
    if op == "close_run":
        run_id = write.get("run_id") or find_trial_run(tracking, write["trial_id"], attempts=1)
        if run_id is None:
            return True, tracking  # the trial never had a run: nothing to close
        for key, value in write.get("tags", {}).items():
            retrying(functools.partial(client.set_tag, run_id, key, value), 1)
        retrying(functools.partial(client.set_terminated, run_id, status=write["status"]), 1)
        return True, tracking
    if op == "finish_sweep":
        outputs = {k: as_path(v) for k, v in write["outputs"].items()}
        plots = [(as_path(file), folder) for file, folder in write.get("plots", [])]
        finish_sweep(tracking, outputs, write["counts"], write["status"], attempts=1, plots=plots)
        return True, tracking
    raise ValueError(f"unknown tracking write {op!r}")


def _log_metrics(client: Any, run_id: str, metrics: list[list[Any]]) -> None:
    now = int(time.time() * 1000)
    values = [Metric(k, float(v), int(t or now), int(step or 0)) for k, v, t, step in metrics]
    for start in range(0, len(values), 1000):
        chunk = values[start : start + 1000]
        retrying(functools.partial(client.log_batch, run_id, metrics=chunk), 1)


def metrics_write(run_id: str, metrics: list[Metric]) -> Write:
    """A ``metrics`` write of unsent values."""
    return {
        "op": "metrics",
        "run_id": run_id,
        "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
    }


def tracking_dict(tracking: Tracking) -> Mapping[str, str]:
    """A ``Tracking`` as stored in ``sweep.json``."""
    return asdict(tracking)
