"""What the sweep's driver does as Tune's trials end without a record (``SweepCallback``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ray import tune

from service.results.folder import SweepFolder
from service.results.records import TrialState
from service.sweep.trial import SweepContext, trial_record
from service.sweep.worker import append_log
from service.tracking.store import Tracking, retrying
from service.tracking.trial_runs import find_trial_run


class SweepCallback(tune.Callback):
    """In the sweep's driver: records of trials that ended without writing their own.

    Those are trials stopped early by ASHA and trials whose driver was lost. Tune saves its
    callbacks with the experiment and ``Tuner.restore`` brings them back, so this keeps no path:
    each trial's sweep folder is its experiment's, which Tune moves with a restored experiment.
    """

    def __init__(self, context: SweepContext) -> None:
        self.context = context

    @staticmethod
    def _folder(trial: Any) -> SweepFolder:
        return SweepFolder(Path(trial.remote_experiment_path))

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
                self._close_run(trial.trial_id, "KILLED", {"dmsweep.status": "pruned"})

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
            self._close_run(trial.trial_id, "FAILED", {"dmsweep.error": error[:5000]})

    def _close_run(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        if self.context.tracking is None:
            return
        track = Tracking(**self.context.tracking)
        run_id = find_trial_run(track, trial_id)
        if run_id is not None:
            client = track.client()
            for key, value in tags.items():
                retrying(functools.partial(client.set_tag, run_id, key, value))
            retrying(lambda: client.set_terminated(run_id, status=status))


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        return Path(path).read_text() if path else "the trial ended with an error"
    except OSError:
        return f"the trial ended with an error (its error file {path} is not readable)"
