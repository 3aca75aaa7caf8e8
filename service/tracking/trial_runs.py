"""A trial's child run: found or created, and written, by rank 0 of the trial's workers.

* The parent run is named after the sweep id; it holds the spec (``spec.yaml``), the sweep's
  tags and provenance, and at the end the results table and the report.
* A child run per trial, nested under the parent (MLflow's ``mlflow.parentRunId`` tag) and named
  ``dataset/backbone/method/loss/seed<k>``; tags ``dataset``, ``backbone``, ``method``, ``loss``,
  ``seed``; every resolved hyperparameter as a param (the trial's ``TrainConfig`` and its
  recipe); per-epoch metrics (step = epoch); the summary metrics; a learning-curve PNG; the final
  checkpoint. A resumed trial finds its child run by the Tune trial id, so there is never a
  second one.
* Provenance on every run: git commit, package versions, hardware.

Only the sweep driver and rank 0 of each trial write here, always through an ``MlflowClient``
bound to the sweep's tracking URI (never the process-wide default, which Ray's worker processes
would not share). The default store is a SQLite file plus an artifact folder under the sweep's
storage path: no server to start.

Writes from a trial are buffered: when the tracking server cannot be reached, training goes on,
metrics wait and are sent with the next epoch's; whatever still cannot be sent when the trial
ends waits in the sweep's ``tracking_outbox`` (``service.tracking.outbox``) for the sweep's
driver to send, as does a child run MLflow could not create when the trial started (the trial
then trains untracked, and its run gets its final metrics). Every wait is bounded. An
artifact of a trial that cannot be stored (its YAML, the checkpoint, the learning curve)
never fails the trial or the sweep, and is not sent later: the error, with
the path it names, goes to the trial's log and to a tag ``dmsweep.artifact_error.<artifact>``
of the run.

Rank 0 finds or creates its child run on a thread of its own (``TrialLogger.start``) while the
trial builds its model and opens its data: a trial never waits for MLflow before its first
step. Metrics of epochs that end before the run exists wait with the others and go with the
next epoch's.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import queue
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from service.storage.paths import AnyPath
from service.tracking.provenance import provenance
from service.tracking.store import Tracking, artifact_error, best_effort, quick_http, retrying
from service.tracking.sweep_runs import SWEEP_ID_TAG

TRIAL_ID_TAG = "dmsweep.trial_id"
PARENT_TAG = "mlflow.parentRunId"
CURVE_METRICS = ("val_top1", "train_loss")

logger = logging.getLogger(__name__)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys, text values within MLflow's limits."""
    if isinstance(value, Mapping) and value:
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix[:MAX_ENTITY_KEY_LENGTH]: str(value)[:MAX_PARAM_VAL_LENGTH]}


def find_trial_run(tracking: Tracking, trial_id: str, attempts: int = 5) -> str | None:
    """The child run of a Tune trial of this sweep, or None before it has one.

    The experiment is shared by every sweep of a spec, and Tune's grid trial ids repeat across
    sweeps (a 20-bit random prefix): the sweep id is part of the filter. Both are names the
    spec and Tune allow (letters, digits, ``-``, ``_``), never quotes.
    """
    client = tracking.client()
    found = retrying(
        lambda: client.search_runs(
            [tracking.experiment_id],
            filter_string=(
                f"tags.`{SWEEP_ID_TAG}` = '{tracking.sweep_id}' "
                f"and tags.`{TRIAL_ID_TAG}` = '{trial_id}'"
            ),
            max_results=1,
        ),
        attempts,
    )
    return found[0].info.run_id if found else None


def create_child_run(
    tracking: Tracking,
    plan: Mapping[str, Any],
    attempts: int = 5,
    log: Callable[[str], None] = logger.warning,
) -> str:
    """Create a trial's child run from ``plan`` (trial_id, name, tags, params, trial_yaml)."""
    client = tracking.client()
    run = retrying(
        lambda: client.create_run(
            tracking.experiment_id,
            run_name=plan["name"],
            tags={
                PARENT_TAG: tracking.parent_run_id,
                SWEEP_ID_TAG: tracking.sweep_id,
                TRIAL_ID_TAG: plan["trial_id"],
                **plan["tags"],
            },
        ),
        attempts,
    )
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in plan["params"].items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        chunk = items[start : start + MAX_PARAMS_TAGS_PER_BATCH]
        retrying(functools.partial(client.log_batch, run_id, params=chunk), attempts)
    try:
        retrying(lambda: client.log_text(run_id, plan["trial_yaml"], "trial.yaml"), attempts)
    except Exception as error:
        log(f"tracking: {artifact_error(client, run_id, 'trial.yaml', error)}")
    return run_id


def child_run(
    tracking: Tracking,
    *,
    trial_id: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    trial_yaml: str,
    log: Callable[[str], None] = logger.warning,
    outbox: AnyPath | None = None,
) -> str | None:
    """The child run of a Tune trial; its run id, or None when MLflow did not answer.

    Found by the trial id when it exists (a resumed trial), created otherwise. Waiting is
    bounded (``best_effort``): a trial never waits long for MLflow to start. Without an answer
    the trial trains untracked, and its run is kept in ``outbox`` (the sweep's
    ``tracking_outbox``) for the sweep's driver to create later, with the trial's final metrics.
    ``log`` is told what was not stored.
    """
    plan: dict[str, Any] = {
        "op": "trial_run",
        "trial_id": trial_id,
        "name": name,
        "tags": dict(tags),
        "params": dict(params),
        "trial_yaml": trial_yaml,
    }

    def find_or_create() -> str:
        found = find_trial_run(tracking, trial_id, attempts=1)
        if found is not None:
            tracking.client().update_run(found, status="RUNNING")
            return found
        return create_child_run(tracking, plan, attempts=1, log=log)

    run_id = best_effort(find_or_create, f"the child run of trial {trial_id}", log)
    if run_id is None and outbox is not None:
        from service.tracking.outbox import BACKFILLED_TAG, Outbox  # it sends through here

        plan["tags"][BACKFILLED_TAG] = "final metrics only: MLflow was down when it started"
        Outbox(outbox).add(plan)
    return run_id


def end_trial_run(
    tracking: Tracking, run_id: str, error: str | None = None, attempts: int = 5
) -> None:
    """Close a child run: FINISHED, or FAILED with the reason as a tag."""
    client = tracking.client()
    if error is not None:
        retrying(lambda: client.set_tag(run_id, "dmsweep.error", error[:5000]), attempts)
    status = RunStatus.to_string(RunStatus.FAILED if error is not None else RunStatus.FINISHED)
    retrying(lambda: client.set_terminated(run_id, status=status), attempts)


@dataclass
class TrialLogger:
    """Rank 0's writer to a trial's child run, buffering what the store does not take.

    ``run`` resolves to the child run's id, or to None when there is none: MLflow did not
    answer in time (the run then waits in the outbox and gets the trial's final metrics; the
    trial trains untracked), or opening it failed otherwise (told to ``log``). Only the thread
    that trains calls ``log``: what the opening thread has to say waits in ``told`` until
    ``settle`` (a trial's log on a bucket is rewritten whole by each line, one writer at a
    time).
    """

    tracking: Tracking
    run: Future[str | None]
    log: Callable[[str], None] = print
    # the sweep's tracking_outbox: what is still unsent at the end is sent later from there
    outbox: AnyPath | None = None
    pending: list[Metric] = field(default_factory=list)
    told: queue.SimpleQueue[str] = field(default_factory=queue.SimpleQueue)
    _client: MlflowClient | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        tracking: Tracking,
        plan: Mapping[str, Any],
        log: Callable[[str], None] = print,
        outbox: AnyPath | None = None,
    ) -> TrialLogger:
        """A logger whose child run is opened on a thread of its own: the caller goes on.

        ``plan`` holds ``child_run``'s keywords; the run is found or created, then given the
        provenance (code, packages, hardware) of this process, the one that trains.
        """
        told: queue.SimpleQueue[str] = queue.SimpleQueue()
        tell = told.put

        def open_run() -> str | None:
            try:
                return child_run(tracking, **plan, log=tell, outbox=outbox)
            except Exception as error:  # the outbox unwritable, ...: the trial trains untracked
                tell(f"tracking: the child run was not opened: {type(error).__name__}: {error}")
                return None

        def tag_provenance() -> None:
            try:
                run_id = run.result()
                if run_id is None:
                    return
                tags = [RunTag(k, v) for k, v in provenance().items()]
                client = tracking.client()
                best_effort(lambda: client.log_batch(run_id, tags=tags), "provenance", tell)
            except Exception as error:
                tell(f"tracking: no provenance on the run: {type(error).__name__}: {error}")

        # One thread, ended once both are done: it holds no lock and every wait in it is
        # bounded (best_effort). The run's id is known before the provenance is written.
        opener = ThreadPoolExecutor(1, thread_name_prefix="dmsweep-child-run")
        run = opener.submit(open_run)
        opener.submit(tag_provenance)
        opener.shutdown(wait=False)
        return cls(tracking, run, log, outbox, told=told)

    @property
    def run_id(self) -> str | None:
        """The child run's id once it is open (waits for it; bounded), or None without one."""
        return self.settle()

    def settle(self) -> str | None:
        """Wait until the run is open or known not to be; tell what the opening had to say.

        The training thread calls it before each epoch goes to Tune: a trial that Tune stops
        or that fails has its run (or its place in the outbox) before the sweep's driver
        looks for it to record the end, and no epoch waits unsent behind the opening.
        """
        run_id = self.run.result()  # open_run returns None rather than raise
        while not self.told.empty():
            self.log(self.told.get())
        return run_id

    @property
    def client(self) -> MlflowClient:
        """Made on first use."""
        if self._client is None:
            self._client = self.tracking.client()
        return self._client

    def _flush(self, run_id: str, attempts: int = 1, quick: bool = False) -> None:
        while self.pending:
            batch = self.pending[:MAX_METRICS_PER_BATCH]
            try:
                with quick_http() if quick else contextlib.nullcontext():
                    retrying(
                        functools.partial(self.client.log_batch, run_id, metrics=batch),
                        attempts,
                    )
            except Exception as error:
                self.log(f"tracking: {len(self.pending)} metric values wait for the store: {error}")
                return
            del self.pending[: len(batch)]

    def log_epoch(self, metrics: Mapping[str, float]) -> None:
        """Per-epoch metrics, step = epoch; sent now or with a later epoch (never waits)."""
        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        if not self.run.done():
            return  # the run is still being opened: these go with a later epoch's
        run_id = self.run.result()
        if run_id is None:  # no run: the trial trains untracked (its run comes later)
            self.pending.clear()
            return
        self._flush(run_id, quick=True)

    def log_artifacts(self, folder: str, artifact_path: str) -> None:
        """A folder of files (the final checkpoint)."""
        run_id = self.run_id
        if run_id is None:
            return
        try:
            with quick_http():
                retrying(lambda: self.client.log_artifacts(run_id, folder, artifact_path), 3)
        except Exception as error:
            self.log(f"tracking: {artifact_error(self.client, run_id, artifact_path, error)}")

    def log_learning_curve(self) -> None:
        """A PNG of validation top-1 and training loss per epoch, from the run's history."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        run_id = self.run_id
        if run_id is None:
            return
        self._flush(run_id, attempts=3, quick=True)  # metrics still waiting would miss the curve
        if self.pending:
            self.log("tracking: no learning curve, MLflow does not have every epoch yet")
            return
        try:
            with quick_http():
                history = {
                    name: sorted(
                        (m.step, m.value) for m in self.client.get_metric_history(run_id, name)
                    )
                    for name in CURVE_METRICS
                }
        except Exception as error:
            self.log(f"tracking: no learning curve, the history is not readable: {error}")
            return
        figure = Figure(figsize=(8, 3.2), layout="constrained")
        FigureCanvasAgg(figure)
        for axes_index, name in enumerate(CURVE_METRICS):
            axes = figure.add_subplot(1, 2, axes_index + 1)
            points = dict(history[name])  # a resumed epoch logged twice: keep the last value
            axes.plot(list(points), list(points.values()), marker="o")
            axes.set_xlabel("epoch")
            axes.set_title(name)
            axes.grid(alpha=0.3)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "learning_curve.png"
            path.write_bytes(buffer.getvalue())
            try:
                with quick_http():
                    retrying(lambda: self.client.log_artifact(run_id, str(path)), 3)
            except Exception as error:
                problem = artifact_error(self.client, run_id, path.name, error)
                self.log(f"tracking: {problem}")

    def close(self, error: str | None = None) -> list[str]:
        """Send what waits (trying harder, within bounds), close the run; what was lost.

        With an ``outbox``, what MLflow still does not take (metrics, the run's end) is left
        there for the sweep's driver to send later: nothing is lost. Without one, the metric
        values that could not be sent are named in the log and a tag of the run. Without a run
        (MLflow did not answer when it was opened) there is nothing to send: the driver makes
        the run later, with the trial's final metrics.
        """
        run_id = self.run_id
        if run_id is None:
            self.pending.clear()
            return []
        self._flush(run_id, attempts=3, quick=True)
        status = RunStatus.to_string(RunStatus.FAILED if error is not None else RunStatus.FINISHED)
        if self.outbox is not None:
            from service.tracking.outbox import Outbox, metrics_write

            def end() -> bool:
                end_trial_run(self.tracking, run_id, error, attempts=1)
                return True

            closed = not self.pending and best_effort(end, "closing the run", self.log)
            if not closed:
                outbox = Outbox(self.outbox)
                if self.pending:
                    outbox.add(metrics_write(run_id, self.pending))
                    self.log(
                        f"tracking: {len(self.pending)} metric values wait in "
                        f"{self.outbox} for MLflow; the sweep's driver sends them"
                    )
                tags = {"dmsweep.error": error[:5000]} if error is not None else {}
                outbox.add({"op": "close_run", "run_id": run_id, "status": status, "tags": tags})
                self.pending = []
            return []
        lost = [f"{m.key}@epoch{m.step}" for m in self.pending]
        if lost:
            self.log("tracking: these metric values could not be sent: " + ", ".join(lost))
        try:
            with quick_http():
                if lost:
                    tag = ", ".join(lost)[:5000]
                    retrying(lambda: self.client.set_tag(run_id, "dmsweep.lost_metrics", tag))
                end_trial_run(self.tracking, run_id, error)
        except Exception as failure:
            self.log(f"tracking: the run could not be closed: {failure}")
        return lost


def trial_yaml(config: Mapping[str, Any]) -> str:
    """A trial's resolved ``TrainConfig`` as YAML (an artifact of its child run)."""
    return yaml.safe_dump(dict(config), sort_keys=False)
