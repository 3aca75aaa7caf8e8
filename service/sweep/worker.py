"""What each Ray Train worker of a trial runs: ``train_loop_per_worker(config)``.

The training loop itself (``trainers.loop.run``) knows neither Ray nor MLflow; this wraps it for
Ray Train V2: it resumes from ``ray.train.get_checkpoint()`` (a restarted worker group, or a
trial whose driver was restarted), hands each epoch's metrics and checkpoint to
``ray.train.report``, and on rank 0 writes the trial's log and its MLflow child run.

Failures the trial will meet again on every retry (a NaN loss, unreadable data, an invalid
setting) are not raised into Ray Train, whose ``FailureConfig`` would restart the worker group
for nothing: they are written to the sweep folder's ``errors/<trial id>.json`` and the worker
returns; the trial's driver turns that file into the trial's failure. Everything else (a killed
worker, a lost node, a broken collective) is raised, and Ray Train restarts the workers from the
last checkpoint.
"""

from __future__ import annotations

import os
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray.train

from service.results.folder import SweepFolder
from service.results.records import Failure
from service.tracking.store import Tracking
from service.tracking.trial_runs import TrialLogger
from trainers.config import TrainConfig
from trainers.loop import NonFiniteLossError, run
from trainers.vocabulary import SUMMARY_METRICS

# Errors that a retry would meet again: raised by the loop for bad numbers, data and settings.
DETERMINISTIC_ERRORS = (NonFiniteLossError, ValueError, FileNotFoundError)


def append_log(path: Path, line: str) -> None:
    """One timestamped line at the end of a trial's log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with path.open("a") as out:
        out.write(f"{stamp} {line}\n")


def _epoch_line(metrics: dict[str, float]) -> str:
    shown = ("train_loss", "val_top1", "val_top5", "val_top1_ema", "lr", "epoch_time_s")
    values = ", ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in SUMMARY_METRICS if k in metrics)
    return f"epoch {int(metrics['epoch'])}: {values}" + (f"; {summary}" if summary else "")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one trial on this worker; ``config`` is built by ``service.sweep.engine``.

    Keys: ``trial`` (the TrainConfig as JSON), ``trial_id``, ``sweep_dir``, ``tracking`` (a
    ``Tracking`` as a dict, or None) and ``run_id`` (the trial's child run).
    """
    trial = TrainConfig.model_validate(config["trial"])
    folder = SweepFolder(Path(config["sweep_dir"]))
    trial_id = config["trial_id"]
    main = ray.train.get_context().get_world_rank() == 0
    log_path = folder.log_file(trial_id)

    def log(line: str) -> None:
        if main:
            append_log(log_path, line)

    logger = None
    if main and config.get("tracking") and config.get("run_id"):
        logger = TrialLogger(
            Tracking(**config["tracking"]), config["run_id"], log, folder.tracking_outbox_dir
        )
        logger.log_provenance()

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        log(_epoch_line(metrics))
        last_epoch = "top1_best" in metrics
        if logger is not None:
            logger.log_epoch(metrics)
        # Closed before the last report: a scheduler may stop the trial as soon as Tune has it.
        if last_epoch and logger is not None:
            if checkpoint_dir is not None:
                logger.log_artifacts(checkpoint_dir, "checkpoint")
            logger.log_learning_curve()
            logger.close()
        if last_epoch:
            log("finished")
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    checkpoint = ray.train.get_checkpoint()
    # Where this worker runs: a user (or a test) finds the process that trains the trial.
    where = f"worker on node {ray.get_runtime_context().get_node_id()}, pid {os.getpid()}"
    try:
        if checkpoint is None:
            log(f"start: {where}")
            run(trial, report)
        else:
            with checkpoint.as_directory() as resume_from:
                log(f"resume from {checkpoint.path}: {where}")
                run(trial, report, resume_from=resume_from)
    except DETERMINISTIC_ERRORS as error:
        message = f"{type(error).__name__}: {error}"
        log(f"failed: {message}\n{traceback.format_exc()}")
        if main:
            folder.write_failure(trial_id, Failure(message, traceback.format_exc()))
        if logger is not None:
            logger.close(error=message)
        return
