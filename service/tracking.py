"""MLflow conventions of a sweep: experiment per spec, parent run per sweep, child per trial.

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
ends is written, by name and epoch, to the trial's log. An artifact that cannot be stored (the
trial's YAML, the checkpoint, the learning curve, the sweep's report) never fails the trial or
the sweep: the error, with the path it names, goes to the trial's log and to a tag
``dmsweep.artifact_error.<artifact>`` of the run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

TRIAL_ID_TAG = "dmsweep.trial_id"
SWEEP_ID_TAG = "dmsweep.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
CELL_TAGS = ("dataset", "backbone", "method", "loss", "seed")
PACKAGES = ("dmsweep", "torch", "torchvision", "timm", "ray", "optuna", "mlflow", "pyarrow")
CURVE_METRICS = ("val_top1", "train_loss")
ARTIFACT_ERROR_TAG = "dmsweep.artifact_error"
# Errors of a local artifact store that a retry would meet again (a path under a regular file,
# no permission): raised at once instead of after the retries' waits.
LASTING_ERRORS = (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A trial's per-epoch writes try once, without the MLflow client's own HTTP retries: those (7,
# with waits adding up to about 4 minutes) held training for as long as the server was away,
# where the logger's buffer is meant to keep the metrics and send them with a later epoch's.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def default_tracking_uri(storage_path: Path) -> str:
    """The embedded store: a SQLite file beside the sweeps."""
    return f"sqlite:///{storage_path.resolve() / 'mlflow.db'}"


def default_artifact_location(storage_path: Path, experiment: str) -> str:
    """Artifacts of the embedded store: a folder per experiment beside the sweeps."""
    return (storage_path.resolve() / "mlartifacts" / experiment).as_uri()


@dataclass(frozen=True)
class Tracking:
    """Where a sweep's runs are: sent to every trial (picklable, no client inside)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str

    def client(self) -> MlflowClient:
        """A client bound to this store."""
        return MlflowClient(tracking_uri=self.uri)


def retrying(call: Callable[[], T], attempts: int = 5, wait_s: float = 0.5) -> T:
    """``call()``, tried again with growing waits: SQLite stores lock, servers restart."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as error:
            if attempt == attempts - 1 or isinstance(error, LASTING_ERRORS):
                raise
            time.sleep(wait_s * 2**attempt)
    raise AssertionError("unreachable")


# --- provenance ------------------------------------------------------------------------------


@functools.cache
def git_commit() -> str:
    """The commit of the dmsweep checkout (``+dirty`` with local changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, str]:
    """Code, packages and hardware of this process, as MLflow tags."""
    import torch  # the driver of a sweep may run without it loaded; a worker always has it

    tags = {"git_commit": git_commit(), "python": platform.python_version()}
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "not installed"
    tags["host"] = platform.node()
    tags["cpu"] = _cpu_model()
    tags["cpu_count"] = str(os.cpu_count())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tags["gpu_count"] = str(gpus)
    tags["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)) or "none"
    return {f"dmsweep.{k}" if k != "git_commit" else "git_commit": v for k, v in tags.items()}


# --- the sweep (driver side) ---------------------------------------------------------------


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another sweep of the same spec created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_sweep(
    *,
    uri: str,
    experiment: str,
    sweep_id: str,
    spec_file: Path,
    tags: Mapping[str, str],
    artifact_location: str | None = None,
) -> Tracking:
    """Create the sweep's parent run (and its experiment when new); where it is."""
    client = MlflowClient(tracking_uri=uri)
    experiment_id = retrying(lambda: _experiment_id(client, experiment, artifact_location))
    run = retrying(
        lambda: client.create_run(
            experiment_id,
            run_name=sweep_id,
            tags={SWEEP_ID_TAG: sweep_id, "dmsweep.kind": "sweep", **tags, **provenance()},
        )
    )
    try:
        retrying(lambda: client.log_artifact(run.info.run_id, str(spec_file)))
    except Exception as error:  # the spec is in the sweep folder all the same
        problem = _artifact_error(client, run.info.run_id, spec_file.name, error)
        logger.warning("tracking: %s", problem)
    return Tracking(uri, experiment_id, run.info.run_id, sweep_id)


def reopen_sweep(tracking: Tracking) -> None:
    """Mark a resumed sweep's parent run as running again."""
    client = tracking.client()
    retrying(lambda: client.update_run(tracking.parent_run_id, status="RUNNING"))


def _artifact_error(client: MlflowClient, run_id: str, artifact: str, error: Exception) -> str:
    """Tag a run with an artifact it does not have and why; the message."""
    message = f"artifact {artifact} was not stored: {error}"
    # When the tracking store is down too, the caller still logs the message.
    with contextlib.suppress(Exception):
        client.set_tag(run_id, f"{ARTIFACT_ERROR_TAG}.{artifact}", str(error)[:5000])
    return message


def finish_sweep(
    tracking: Tracking,
    outputs: Mapping[str, Path],
    counts: Mapping[str, int],
    status: str = "FINISHED",
) -> list[str]:
    """Attach the results and report to the parent run and close it; the artifacts it lacks.

    The outputs are already on disk: an artifact store that fails leaves the run without them
    (said in a tag and a warning), it does not fail the sweep.
    """
    client = tracking.client()
    problems = []
    for path in outputs.values():
        try:
            retrying(lambda p=path: client.log_artifact(tracking.parent_run_id, str(p), "report"))
        except Exception as error:
            problems.append(_artifact_error(client, tracking.parent_run_id, "report", error))
            logger.warning("tracking: %s", problems[-1])
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    retrying(lambda: client.log_batch(tracking.parent_run_id, metrics=metrics))
    retrying(lambda: client.set_terminated(tracking.parent_run_id, status=status))
    return problems


def run_url(tracking: Tracking) -> str:
    """Where the parent run is shown in the MLflow UI (relative for a local store)."""
    path = f"#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}"
    if tracking.uri.startswith(("http://", "https://")):
        return f"{tracking.uri.rstrip('/')}/{path}"
    return path


# --- one trial -------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys, text values within MLflow's limits."""
    if isinstance(value, Mapping) and value:
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix[:MAX_ENTITY_KEY_LENGTH]: str(value)[:MAX_PARAM_VAL_LENGTH]}


def find_trial_run(tracking: Tracking, trial_id: str) -> str | None:
    """The child run of a Tune trial, or None before it has one."""
    client = tracking.client()
    found = retrying(
        lambda: client.search_runs(
            [tracking.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
            max_results=1,
        )
    )
    return found[0].info.run_id if found else None


def child_run(
    tracking: Tracking,
    *,
    trial_id: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    trial_yaml: str,
    log: Callable[[str], None] = logger.warning,
) -> str:
    """The child run of a Tune trial; its run id.

    Found by the trial id when it exists (a resumed trial), created otherwise. ``log`` is told
    when the trial's YAML cannot be stored (the trial goes on without it).
    """
    client = tracking.client()
    found = find_trial_run(tracking, trial_id)
    if found is not None:
        retrying(lambda: client.update_run(found, status="RUNNING"))
        return found
    run = retrying(
        lambda: client.create_run(
            tracking.experiment_id,
            run_name=name,
            tags={
                PARENT_TAG: tracking.parent_run_id,
                SWEEP_ID_TAG: tracking.sweep_id,
                TRIAL_ID_TAG: trial_id,
                **tags,
            },
        )
    )
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        chunk = items[start : start + MAX_PARAMS_TAGS_PER_BATCH]
        retrying(lambda c=chunk: client.log_batch(run_id, params=c))
    try:
        retrying(lambda: client.log_text(run_id, trial_yaml, "trial.yaml"))
    except Exception as error:
        log(f"tracking: {_artifact_error(client, run_id, 'trial.yaml', error)}")
    return run_id


def end_trial_run(tracking: Tracking, run_id: str, error: str | None = None) -> None:
    """Close a child run: FINISHED, or FAILED with the reason as a tag."""
    client = tracking.client()
    if error is not None:
        retrying(lambda: client.set_tag(run_id, "dmsweep.error", error[:5000]))
    status = RunStatus.to_string(RunStatus.FAILED if error is not None else RunStatus.FINISHED)
    retrying(lambda: client.set_terminated(run_id, status=status))


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """MLflow HTTP requests made inside fail at once (``QUICK_HTTP``); settings restored after.

    MLflow reads these variables on every request. Used in a training worker, where nothing
    but the trial's logger talks to MLflow.
    """
    saved = {name: os.environ.get(name) for name in QUICK_HTTP}
    os.environ.update(QUICK_HTTP)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class TrialLogger:
    """Rank 0's writer to a trial's child run, buffering what the store does not take."""

    tracking: Tracking
    run_id: str
    log: Callable[[str], None] = print
    pending: list[Metric] = field(default_factory=list)
    _client: MlflowClient | None = field(default=None, repr=False)

    @property
    def client(self) -> MlflowClient:
        """Made on first use: the logger travels to the worker by pickle."""
        if self._client is None:
            self._client = self.tracking.client()
        return self._client

    def _flush(self, attempts: int = 1, quick: bool = False) -> None:
        while self.pending:
            batch = self.pending[:MAX_METRICS_PER_BATCH]
            try:
                with quick_http() if quick else contextlib.nullcontext():
                    retrying(
                        lambda b=batch: self.client.log_batch(self.run_id, metrics=b), attempts
                    )
            except Exception as error:
                self.log(f"tracking: {len(self.pending)} metric values wait for the store: {error}")
                return
            del self.pending[: len(batch)]

    def log_provenance(self) -> None:
        """Code, packages and hardware of the process that trains (rank 0's node)."""
        tags = [RunTag(k, v) for k, v in provenance().items()]
        try:
            retrying(lambda: self.client.log_batch(self.run_id, tags=tags))
        except Exception as error:
            self.log(f"tracking: provenance not stored: {error}")

    def log_epoch(self, metrics: Mapping[str, float]) -> None:
        """Per-epoch metrics, step = epoch; sent now or with a later epoch (never waits)."""
        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        self._flush(quick=True)

    def log_artifacts(self, folder: str, artifact_path: str) -> None:
        """A folder of files (the final checkpoint)."""
        try:
            retrying(lambda: self.client.log_artifacts(self.run_id, folder, artifact_path))
        except Exception as error:
            self.log(f"tracking: {_artifact_error(self.client, self.run_id, artifact_path, error)}")

    def log_learning_curve(self) -> None:
        """A PNG of validation top-1 and training loss per epoch, from the run's history."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._flush(attempts=6)  # metrics still waiting would be missing from the curve
        try:
            history = {
                name: sorted(
                    (m.step, m.value) for m in self.client.get_metric_history(self.run_id, name)
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
                retrying(lambda: self.client.log_artifact(self.run_id, str(path)))
            except Exception as error:
                problem = _artifact_error(self.client, self.run_id, path.name, error)
                self.log(f"tracking: {problem}")

    def close(self, error: str | None = None) -> list[str]:
        """Send what waits (trying harder), close the run; what could not be sent, if any."""
        self._flush(attempts=6)
        lost = [f"{m.key}@epoch{m.step}" for m in self.pending]
        if lost:
            self.log("tracking: these metric values could not be sent: " + ", ".join(lost))
        try:
            if lost:
                self.client.set_tag(self.run_id, "dmsweep.lost_metrics", ", ".join(lost)[:5000])
            end_trial_run(self.tracking, self.run_id, error)
        except Exception as failure:
            self.log(f"tracking: the run could not be closed: {failure}")
        return lost


def trial_yaml(config: Mapping[str, Any]) -> str:
    """A trial's resolved ``TrainConfig`` as YAML (an artifact of its child run)."""
    return yaml.safe_dump(dict(config), sort_keys=False)
