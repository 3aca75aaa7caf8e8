"""Where a sweep's runs are (``Tracking``), and talking to that store: retries, quick failures.

Only the sweep driver and rank 0 of each trial write to MLflow, always through an
``MlflowClient`` bound to the sweep's tracking URI (never the process-wide default, which Ray's
worker processes would not share). The default store is a SQLite file plus an artifact folder
under the sweep's storage path: no server to start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient

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


def artifact_error(client: MlflowClient, run_id: str, artifact: str, error: Exception) -> str:
    """Tag a run with an artifact it does not have and why; the message."""
    message = f"artifact {artifact} was not stored: {error}"
    # When the tracking store is down too, the caller still logs the message.
    with contextlib.suppress(Exception):
        client.set_tag(run_id, f"{ARTIFACT_ERROR_TAG}.{artifact}", str(error)[:5000])
    return message
