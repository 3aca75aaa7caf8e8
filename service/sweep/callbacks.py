"""What the sweep's driver does as Tune's trials end without a record (``SweepCallback``).

Also where the driver sends the MLflow writes that waited for MLflow (``send_pending``): every
MLflow call here is best-effort, since Tune does not catch a callback's error and one would end
the sweep.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import tune

from service.results.folder import SweepFolder
from service.results.records import TrialRecord, TrialState
from service.storage.bucket_path import BucketPath
from service.sweep.trial import SweepContext, trial_record
from service.sweep.worker import append_log
from service.tracking.outbox import BACKFILLED_TAG, FLUSH_EVERY_S, Outbox
from service.tracking.store import Tracking, best_effort
from service.tracking.trial_runs import find_trial_run

logger = logging.getLogger(__name__)


def send_pending(
    folder: SweepFolder, log: Callable[[str], None] = logger.warning
) -> Tracking | None:
    """Send the sweep's MLflow writes that waited (oldest first); the sweep's tracking.

    A parent run made late (MLflow was down when the sweep was created) is stored in
    ``sweep.json`` as soon as it exists.
    """
    state = folder.read_state()
    track = Tracking(**state.tracking) if state.tracking else None
    outbox = Outbox(folder.tracking_outbox_dir)
    if not outbox.pending():
        return track

    def record_of(trial_id: str) -> tuple[str, dict[str, float], int] | None:
        record = folder.read_record(trial_id)
        if record is None:
            return None
        last = record.metrics.get("epoch")
        step = int(last) if last is not None else (record.epochs or 0)
        return str(record.status), dict(record.metrics), step

    def made(late: Tracking) -> None:
        folder.update_state(tracking=asdict(late))

    return outbox.flush(track, record_of, made, log)


def backfill_write(record: TrialRecord) -> dict[str, Any]:
    """The child run of a trial that ran while its sweep had no parent run (MLflow was down)."""
    tags = {
        "dataset": record.dataset,
        "backbone": record.backbone,
        "method": record.method,
        "loss": record.loss,
        "seed": str(record.seed),
        "cell": record.cell,
        BACKFILLED_TAG: "final metrics only: MLflow was down while the trial ran",
    }
    params = {f"hp.{k}": str(v) for k, v in record.hyperparameters.items()}
    return {
        "op": "trial_run",
        "trial_id": record.trial_id,
        "name": record.name,
        "tags": tags,
        "params": params,
        "trial_yaml": "",
    }


class SweepCallback(tune.Callback):
    """In the sweep's driver: records of trials that ended without writing their own.

    Those are trials stopped early by ASHA and trials whose driver was lost. Tune saves its
    callbacks with the experiment and ``Tuner.restore`` brings them back, so this keeps no path:
    each trial's sweep folder is its experiment's, which Tune moves with a restored experiment.
    """

    def __init__(self, context: SweepContext) -> None:
        self.context = context
        self._sent_at = 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Now and then (``FLUSH_EVERY_S``), send the MLflow writes that waited for MLflow."""
        now = time.monotonic()
        if not trials or now - getattr(self, "_sent_at", 0.0) < FLUSH_EVERY_S:
            return
        self._sent_at = now
        try:
            send_pending(self._folder(trials[0]))
        except Exception:  # never into Tune: the writes stay for the next time
            logger.exception("tracking: sending the waiting MLflow writes failed")

    @staticmethod
    def _folder(trial: Any) -> SweepFolder:
        # Tune's path of the experiment in its storage file system: on a bucket, without scheme.
        path = trial.remote_experiment_path
        if trial.storage.storage_filesystem.type_name == "s3":
            return SweepFolder(BucketPath(f"s3://{path}"))
        return SweepFolder(Path(path))

    def _identity(self, trial: Any) -> tuple[str, int, dict[str, float]]:
        return (
            trial.config["cell"],
            int(trial.config["seed"]),
            dict(trial.config.get("params") or {}),
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Write the record of a trial that Tune stopped: succeeded at its last epoch, else pruned.

        A trial that returned wrote its own record; one that Tune stopped (ASHA) did not.
        """
        folder = self._folder(trial)
        if folder.read_record(trial.trial_id) is None:
            cell, seed, params = self._identity(trial)
            last = {
                k: v for k, v in (trial.last_result or {}).items() if isinstance(v, (int, float))
            }
            # ASHA also stops a trial when its last epoch reaches max_t: that one finished.
            finished = last.get("epoch", 0) >= self.context.cells[cell].epochs
            status = TrialState.SUCCEEDED if finished else TrialState.PRUNED
            folder.write_record(
                trial_record(self.context, trial.trial_id, cell, seed, params, status, metrics=last)
            )
            if not finished:
                self._close_run(folder, trial.trial_id, "KILLED", {"dmsweep.status": "pruned"})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial whose driver could not write its record (lost) gets one here."""
        folder = self._folder(trial)
        if folder.read_record(trial.trial_id) is None:
            cell, seed, params = self._identity(trial)
            message = _error_text(trial)
            folder.write_record(
                trial_record(
                    self.context,
                    trial.trial_id,
                    cell,
                    seed,
                    params,
                    TrialState.FAILED,
                    error=message.strip().splitlines()[-1] if message.strip() else "unknown",
                    deterministic=False,
                    traceback=message,
                ),
            )
            append_log(folder.log_file(trial.trial_id), f"failed:\n{message}")
        record = folder.read_record(trial.trial_id)
        if record is None or not record.deterministic:  # the worker closed those itself
            error = (record.error if record is not None else None) or "the trial failed"
            self._close_run(folder, trial.trial_id, "FAILED", {"dmsweep.error": error[:5000]})

    def _close_run(
        self, folder: SweepFolder, trial_id: str, status: str, tags: dict[str, str]
    ) -> None:
        """Close a trial's run, or leave that for later when MLflow does not answer."""
        if self.context.tracking is None:
            return
        track = Tracking(**self.context.tracking)

        def close() -> bool:
            run_id = find_trial_run(track, trial_id, attempts=1)
            if run_id is not None:
                client = track.client()
                for key, value in tags.items():
                    client.set_tag(run_id, key, value)
                client.set_terminated(run_id, status=status)
            return True

        log = functools.partial(append_log, folder.log_file(trial_id))
        if best_effort(close, f"closing the run of trial {trial_id}", log) is None:
            write = {"op": "close_run", "trial_id": trial_id, "status": status, "tags": tags}
            Outbox(folder.tracking_outbox_dir).add(write)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        return Path(path).read_text() if path else "the trial ended with an error"
    except OSError:
        return f"the trial ended with an error (its error file {path} is not readable)"
