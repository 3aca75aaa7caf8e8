"""What trains a trial: in the Tune trial's own process, or on each Ray Train worker.

The training loop itself (``trainers.loop.run``) knows neither Ray nor MLflow. ``train`` wraps it
once for both places a trial trains:

* **In the trial's process** (``train_in_trial``): a trial of one worker trains inside its Tune
  trial, which holds the worker's CPUs and GPUs. Its checkpoints are kept in the trial's folder
  under the sweep's ``train/`` (``TrialCheckpoints``: written whole, then renamed into place), and
  a restarted trial (Tune's retry after a lost process or node, or ``dmsweep resume`` after the
  sweep's driver died) goes on from the newest one. An epoch's metrics go to ``tune.report``
  once its checkpoint is kept, so with a checkpoint every epoch Tune sees each epoch once (with
  ``checkpoint_every: k``, the epochs after the last checkpoint are reported again on a restart,
  as Ray Train does: ASHA and Optuna keep the first value of a step).
* **On Ray Train workers** (``train_loop_per_worker``): a trial of several workers is a Ray Train
  V2 run. It resumes from ``ray.train.get_checkpoint()`` and hands each epoch's metrics and
  checkpoint to ``ray.train.report``.

Either way, rank 0 writes the trial's log and its MLflow child run. Failures the trial will meet
again on every retry (a NaN loss, unreadable data, an invalid setting) are not raised into Ray,
which would restart the trial for nothing: they are written to the sweep folder's
``errors/<trial id>.json`` and training returns; the trial's driver turns that file into the
trial's failure. Everything else (a killed process, a lost node, a broken collective, storage
that fails: ``CheckpointStorageError``) is raised, and Ray restarts the trial from its last
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray import tune

from service.results.folder import SweepFolder
from service.results.records import Failure
from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath, append_text, as_path
from service.tracking.store import Tracking
from service.tracking.trial_runs import TrialLogger
from trainers.config import TrainConfig
from trainers.loop import NonFiniteLossError, run
from trainers.vocabulary import SUMMARY_METRICS

# Errors that a retry would meet again: raised by the loop for bad numbers, data and settings.
DETERMINISTIC_ERRORS = (NonFiniteLossError, ValueError, FileNotFoundError)
CHECKPOINTS_KEPT = 2  # the newest checkpoints of a trial kept on storage
METRICS_FILE = "metrics.json"  # beside a kept checkpoint: the metrics of its epoch
HandOver = Callable[[dict[str, float], str | None], None]


class CheckpointStorageError(RuntimeError):
    """A checkpoint could not be kept in the trial's folder (the message names the path).

    Never one of ``DETERMINISTIC_ERRORS``, even when the file system raised
    ``FileNotFoundError``: storage may be back on the next try.
    """


def append_log(path: AnyPath, line: str) -> None:
    """One timestamped line at the end of a trial's log."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    append_text(path, f"{stamp} {line}\n")


def _epoch_line(metrics: dict[str, float]) -> str:
    shown = ("train_loss", "val_top1", "val_top5", "val_top1_ema", "lr", "epoch_time_s")
    values = ", ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in SUMMARY_METRICS if k in metrics)
    return f"epoch {int(metrics['epoch'])}: {values}" + (f"; {summary}" if summary else "")


class TrialCheckpoints:
    """A trial's checkpoints in its own folder (``<sweep>/train/<trial id>/``), newest kept.

    On a local (or shared) folder each is copied under a hidden name and renamed into place, so
    a folder named ``checkpoint_<epoch>`` is always whole, whenever the process dies. On a
    bucket, where nothing is renamed, its files are uploaded first and its ``metrics.json``
    last: a checkpoint is whole once that object exists, and the newest whole one wins
    (``newest``); one cut off midway is never read, and is deleted with the old ones.
    """

    PATTERN = re.compile(r"checkpoint_(\d{6})")

    def __init__(self, folder: AnyPath) -> None:
        self.folder = folder

    @staticmethod
    def metrics(checkpoint: AnyPath) -> dict[str, float]:
        """The metrics of the epoch a kept checkpoint ends."""
        return json.loads((checkpoint / METRICS_FILE).read_text())

    def finished(self) -> dict[str, float] | None:
        """The last epoch's metrics when the newest checkpoint ends the trial, else None."""
        newest = self.newest()
        if newest is None:
            return None
        metrics = self.metrics(newest)
        return metrics if "top1_best" in metrics else None

    def newest(self) -> AnyPath | None:
        """The newest whole checkpoint, or None."""
        kept = self._whole()
        return kept[-1] if kept else None

    def _named(self) -> list[AnyPath]:
        """Every ``checkpoint_<epoch>`` of the folder, oldest first (on a bucket: whole or not)."""
        if not self.folder.is_dir():
            return []
        return sorted(
            (p for p in self.folder.iterdir() if self.PATTERN.fullmatch(p.name)),
            key=lambda p: p.name,
        )

    def _whole(self) -> list[AnyPath]:
        named = self._named()
        if isinstance(self.folder, BucketPath):  # whole once its metrics are (written last)
            return [p for p in named if (p / METRICS_FILE).is_file()]
        return named  # renamed into place whole

    def keep(self, checkpoint_dir: str, metrics: dict[str, float]) -> None:
        """Keep the loop's checkpoint with its epoch's metrics; drop all but the newest few."""
        if isinstance(self.folder, BucketPath):
            self._upload(self.folder, checkpoint_dir, metrics)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"checkpoint_{int(metrics['epoch']):06d}"
        partial = self.folder / f".{final.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint_dir, partial)
        (partial / METRICS_FILE).write_text(json.dumps(metrics))
        if final.exists():  # only if two processes train the trial (a node cut off, not dead)
            shutil.rmtree(final)
        os.replace(partial, final)
        kept = sorted(p for p in self.folder.iterdir() if self.PATTERN.fullmatch(p.name))
        for old in kept[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)

    def _upload(self, folder: BucketPath, checkpoint_dir: str, metrics: dict[str, float]) -> None:
        final = folder / f"checkpoint_{int(metrics['epoch']):06d}"
        final.rmtree()  # only if two processes train the trial (a node cut off, not dead)
        final.upload(checkpoint_dir)
        (final / METRICS_FILE).write_text(json.dumps(metrics))  # last: now it is whole
        whole = self._whole()
        newest_kept = whole[-CHECKPOINTS_KEPT:]
        for old in self._named():
            # Older than the one just kept: superseded, or cut off by a kill while uploading.
            if old not in newest_kept and old.name < final.name:
                assert isinstance(old, BucketPath)
                old.rmtree()

    def local(self, checkpoint: AnyPath) -> contextlib.AbstractContextManager[str]:
        """A local folder holding ``checkpoint`` while the context lasts (a bucket's downloaded)."""
        if isinstance(checkpoint, BucketPath):
            return _downloaded(checkpoint)
        return contextlib.nullcontext(str(checkpoint))


@contextlib.contextmanager
def _downloaded(checkpoint: BucketPath) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="dmsweep-checkpoint-") as scratch:
        local = Path(scratch) / checkpoint.name
        checkpoint.download(local)
        yield str(local)


def _trial_log(config: dict[str, Any], main: bool) -> Callable[[str], None]:
    """What writes lines to the trial's log: rank 0 only."""
    folder = SweepFolder(as_path(config["sweep_dir"]))
    log_path = folder.log_file(config["trial_id"])

    def log(line: str) -> None:
        if main:
            append_log(log_path, line)

    return log


def open_trial_run(config: dict[str, Any]) -> TrialLogger | None:
    """Rank 0's logger of the trial's child run, opened on its own thread (None: untracked).

    Opened first thing, before anything that may fail, so that a trial that fails has a run
    to record it.
    """
    if not (config.get("tracking") and config.get("run_plan")):
        return None
    folder = SweepFolder(as_path(config["sweep_dir"]))
    return TrialLogger.start(
        Tracking(**config["tracking"]),
        config["run_plan"],
        _trial_log(config, main=True),
        folder.tracking_outbox_dir,
    )


def train(
    config: dict[str, Any],
    *,
    main: bool,
    resume_from: str | None,
    hand_over: HandOver,
    kept: str | None = None,
    logger: TrialLogger | None = None,
) -> dict[str, float] | None:
    """Train one trial here; the last epoch's metrics (None: a failure a retry would repeat).

    ``config`` is built by ``service.sweep.trial``.

    Keys: ``trial`` (the TrainConfig as JSON), ``trial_id``, ``sweep_dir``, ``tracking`` (a
    ``Tracking`` as a dict, or None) and ``run_plan`` (``child_run``'s keywords: the trial's
    child run, opened by rank 0 while it builds the trial). ``main``: rank 0, which logs and
    tracks; ``resume_from``: a checkpoint folder to go on from; ``hand_over(metrics,
    checkpoint_dir)``: gives each epoch to Ray (the folder is removed once it returns);
    ``kept``: where ``resume_from`` was kept, for the log (a bucket's checkpoint is downloaded);
    ``logger``: rank 0's (``open_trial_run``), None elsewhere or untracked.
    """
    trial = TrainConfig.model_validate(config["trial"])
    folder = SweepFolder(as_path(config["sweep_dir"]))
    trial_id = config["trial_id"]
    log = _trial_log(config, main)

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        log(_epoch_line(metrics))
        last_epoch = "top1_best" in metrics
        if logger is not None:
            logger.settle()  # opened while the trial was built and trained (seldom a wait)
            logger.log_epoch(metrics)
        # Closed before the last report: a scheduler may stop the trial as soon as Tune has it.
        if last_epoch and logger is not None:
            if checkpoint_dir is not None:
                logger.log_artifacts(checkpoint_dir, "checkpoint")
            logger.log_learning_curve()
            logger.close()
        if last_epoch:
            log("finished")
        hand_over(metrics, checkpoint_dir)

    # Where this trial trains: a user (or a test) finds the process that trains it.
    context = ray.get_runtime_context()
    where = f"worker on node {context.get_node_id()}, pid {os.getpid()}"
    gpus = context.get_accelerator_ids().get("GPU")
    if gpus:  # the same id in several trials: they share that GPU (fractional gpus_per_worker)
        where += f", GPU {','.join(gpus)}"
    try:
        if resume_from is None:
            log(f"start: {where}")
        else:
            log(f"resume from {kept or resume_from}: {where}")
        return run(trial, report, resume_from=resume_from)
    except DETERMINISTIC_ERRORS as error:
        message = f"{type(error).__name__}: {error}"
        log(f"failed: {message}\n{traceback.format_exc()}")
        if main:
            folder.write_failure(trial_id, Failure(message, traceback.format_exc()))
        if logger is not None:
            logger.close(error=message)
        return None
    finally:
        if logger is not None:
            # Whatever ended the trial before its first epoch, its run is open (or in the
            # outbox) before the sweep's driver looks for it to record the end (SweepCallback).
            logger.settle()


def train_in_trial(config: dict[str, Any]) -> dict[str, float] | None:
    """A one-worker trial, trained in its Tune trial's process; as ``train`` returns.

    Each epoch's checkpoint is kept before its metrics go to ``tune.report``. A trial whose
    newest checkpoint already ends it is not run here (``service.sweep.trial.run_trial`` records
    it first).
    """
    folder = SweepFolder(as_path(config["sweep_dir"]))
    logger = open_trial_run(config)
    try:
        return _train_in_place(config, folder, logger)
    finally:
        if logger is not None:
            logger.settle()  # a trial failing before training: its run is there to record it


def _train_in_place(
    config: dict[str, Any], folder: SweepFolder, logger: TrialLogger | None
) -> dict[str, float] | None:
    checkpoints = TrialCheckpoints(folder.train_dir / config["trial_id"])
    try:
        checkpoints.folder.mkdir(parents=True, exist_ok=True)  # storage checked before training
        checkpoints.folder.exists()  # a bucket: reachable with these credentials (mkdir is none)
    except OSError as error:
        raise CheckpointStorageError(f"the trial's checkpoint folder: {error}") from error

    def hand_over(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is not None:
            try:
                checkpoints.keep(checkpoint_dir, metrics)
            except OSError as error:
                raise CheckpointStorageError(f"keeping a checkpoint: {error}") from error
        tune.report(metrics)

    try:
        newest = checkpoints.newest()
    except OSError as error:
        raise CheckpointStorageError(f"the trial's checkpoints: {error}") from error
    if newest is None:
        return train(config, main=True, resume_from=None, hand_over=hand_over, logger=logger)
    with checkpoints.local(newest) as resume_from:
        return train(
            config,
            main=True,
            resume_from=resume_from,
            hand_over=hand_over,
            kept=str(newest),
            logger=logger,
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker of a several-worker trial (a Ray Train V2 run)."""

    def hand_over(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    main = ray.train.get_context().get_world_rank() == 0
    logger = open_trial_run(config) if main else None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        train(config, main=main, resume_from=None, hand_over=hand_over, logger=logger)
        return
    with checkpoint.as_directory() as resume_from:
        train(config, main=main, resume_from=resume_from, hand_over=hand_over, logger=logger)
