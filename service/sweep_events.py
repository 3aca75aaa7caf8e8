"""What the sweep's driver does as Tune's trials start, report and end (``SweepCallback``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from service import tracking
from service.sweep_folder import SweepFolder
from service.trial import SweepContext, trial_name, trial_record
from service.worker import append_log


class SweepCallback(tune.Callback):
    """In the sweep's driver: records of trials that ended without writing their own.

    Those are trials stopped early by ASHA and trials whose driver was lost; the callback also
    feeds the command line's progress display.
    """

    def __init__(
        self,
        folder: SweepFolder,
        context: SweepContext,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.folder = folder
        self.context = context
        self.on_change = on_change
        self.running: set[str] = set()
        self.interrupted = False

    # Tune saves its callbacks with the experiment; a live display does not pickle.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_change": None}

    def _identity(self, trial: Any) -> tuple[str, int, dict[str, float]]:
        return (
            trial.config["cell"],
            int(trial.config["seed"]),
            dict(trial.config.get("params") or {}),
        )

    def _notify(self, event: str, trial: Any, result: dict | None = None) -> None:
        if self.on_change is not None:
            cell, seed, params = self._identity(trial)
            self.on_change(
                {
                    "event": event,
                    "trial_id": trial.trial_id,
                    "name": trial_name(cell, seed, params),
                    "running": len(self.running),
                    "result": result or {},
                    "record": (
                        self.folder.read_record(trial.trial_id)
                        if event in ("complete", "error")
                        else None
                    ),
                }
            )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Progress: one more running."""
        self.running.add(trial.trial_id)
        self._notify("start", trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """Progress: an epoch."""
        self._notify("result", trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Write the record of a trial that Tune stopped: succeeded at its last epoch, else pruned.

        A trial that returned wrote its own record; one that Tune stopped (ASHA) did not.
        """
        self.running.discard(trial.trial_id)
        if self.folder.read_record(trial.trial_id) is None:
            cell, seed, params = self._identity(trial)
            last = {
                k: v for k, v in (trial.last_result or {}).items() if isinstance(v, (int, float))
            }
            # ASHA also stops a trial when its last epoch reaches max_t: that one finished.
            finished = last.get("epoch", 0) >= self.context.cells[cell]["epochs"]
            status = "succeeded" if finished else "pruned"
            self.folder.write_record(
                trial.trial_id,
                trial_record(self.context, trial.trial_id, cell, seed, params, status, **last),
            )
            if not finished:
                self._close_run(trial.trial_id, "KILLED", {"dmsweep.status": "pruned"})
        self._notify("complete", trial, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial whose driver could not write its record (lost) gets one here."""
        self.running.discard(trial.trial_id)
        if self.folder.read_record(trial.trial_id) is None:
            cell, seed, params = self._identity(trial)
            message = _error_text(trial)
            self.folder.write_record(
                trial.trial_id,
                trial_record(
                    self.context,
                    trial.trial_id,
                    cell,
                    seed,
                    params,
                    "failed",
                    error=message.strip().splitlines()[-1] if message.strip() else "unknown",
                    deterministic=False,
                    traceback=message,
                ),
            )
            append_log(self.folder.log_file(trial.trial_id), f"failed:\n{message}")
        record = self.folder.read_record(trial.trial_id) or {}
        if not record.get("deterministic"):  # the worker closed those itself
            error = record.get("error", "the trial failed")
            self._close_run(trial.trial_id, "FAILED", {"dmsweep.error": error[:5000]})
        self._notify("error", trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """An experiment that ends with unfinished trials was interrupted."""
        self.interrupted = any(t.status not in ("TERMINATED", "ERROR") for t in trials)

    def _close_run(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        if self.context.tracking is None:
            return
        track = tracking.Tracking(**self.context.tracking)
        run_id = tracking.find_trial_run(track, trial_id)
        if run_id is not None:
            client = track.client()
            for key, value in tags.items():
                tracking.retrying(lambda k=key, v=value: client.set_tag(run_id, k, v))
            tracking.retrying(lambda: client.set_terminated(run_id, status=status))


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        return Path(path).read_text() if path else "the trial ended with an error"
    except OSError:
        return f"the trial ended with an error (its error file {path} is not readable)"
