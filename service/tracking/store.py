"""Where a sweep's runs are (``Tracking``), and talking to that store: retries, quick failures.

Only the sweep driver and rank 0 of each trial write to MLflow, always through an
``MlflowClient`` bound to the sweep's tracking URI (never the process-wide default, which Ray's
worker processes would not share). The default store is a SQLite file plus an artifact folder
under the sweep's storage path: no server to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from mlflow import MlflowClient

from service.tracking.uri import with_credentials

ARTIFACT_ERROR_TAG = "dmsweep.artifact_error"
# Errors of a local artifact store that a retry would meet again (a path under a regular file,
# no permission): raised at once instead of after the retries' waits.
LASTING_ERRORS = (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)

logger = logging.getLogger(__name__)
# A tracking call that takes this long is named in the log: a store locked or far away. (A
# driver's first call opens MLflow's store, a few seconds of imports and schema checks, one
# driver at a time: see prepare_store.)
SLOW_TRACKING_S = 10.0

T = TypeVar("T")


# A trial's per-epoch writes try once, without the MLflow client's own HTTP retries: those (7,
# with waits adding up to about 4 minutes) held training for as long as the server was away,
# where the logger's buffer is meant to keep the metrics and send them with a later epoch's.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def default_tracking_uri(storage_path: Path) -> str:
    """The embedded store: a SQLite file beside the sweeps."""
    return f"sqlite:///{storage_path.resolve() / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


_PREPARED: set[str] = set()


def prepare_store(uri: str) -> None:
    """Make a SQLite tracking store ready for many concurrent writers, once per file.

    MLflow creates and migrates a new SQLite store the first time a client opens it, without
    any lock: two sweep drivers opening a fresh store at once both ran the migrations, and one
    failed (``sqlite3.OperationalError: duplicate column name: step``). Here the first opener
    does it under an exclusive lock on ``<file>.lock``, and the others wait and find it done.
    A new store is built under a temporary name and renamed into place once whole
    (``_create_store``): a process killed while MLflow created its tables left a store whose
    tables existed without their migration record, which every later opener failed to migrate
    (``index ... already exists``). The file is also switched to write-ahead logging, which lets
    readers (the UI, the service) and writers proceed together; MLflow's own sessions wait up to
    20 s for a writer's lock (``busy_timeout``). Other stores (a tracking server, PostgreSQL) are
    left as they are, and so is an existing file (MLflow migrates it in place after an upgrade).
    """
    path = sqlite_file(uri)
    if path is None or uri in _PREPARED:
        return
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                connection = sqlite3.connect(path, timeout=60)
                try:
                    connection.execute("PRAGMA journal_mode=WAL")  # a store made without it
                finally:
                    connection.close()
            else:
                _create_store(path)
            retrying(lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _PREPARED.add(uri)


def _create_store(path: Path) -> None:
    """MLflow's tables in a new SQLite file, in WAL mode, renamed to ``path`` once whole."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    building = path.with_name(f".{path.name}.building")
    for leftover in path.parent.glob(f"{building.name}*"):  # of a creator killed midway
        leftover.unlink()
    # The Default experiment's artifact folder (unused: each spec's experiment names its own).
    store = SqlAlchemyStore(f"sqlite:///{building}", str(path.parent / "mlruns"))
    store.engine.dispose()  # every connection closed: nothing of it is left in a journal
    connection = sqlite3.connect(building, timeout=60)
    try:
        connection.execute("PRAGMA journal_mode=WAL")  # kept by the file from now on
    finally:
        connection.close()  # the last connection: SQLite checkpoints and removes the WAL
    with open(building, "rb") as built:
        os.fsync(built.fileno())
    os.replace(building, path)


def reachable(uri: str, timeout_s: float = 2.0) -> bool | None:
    """Whether the tracking store answers now (readiness).

    A server's ``/health``, a SQLite file's folder; None for a store this does not check (a
    database URL).
    """
    if uri.startswith(("http://", "https://")):
        try:
            response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
    path = sqlite_file(uri)
    if path is not None:
        return path.is_file() or path.parent.is_dir()
    return None


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
        """A client bound to this store (``uri`` is stored redacted; see ``tracking.uri``)."""
        return MlflowClient(tracking_uri=with_credentials(self.uri))


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


def best_effort(
    call: Callable[[], T],
    what: str,
    log: Callable[[str], None] = logger.warning,
    attempts: int = 3,
) -> T | None:
    """``call()`` with bounded waiting, or None (told to ``log``) when MLflow did not take it.

    Requests fail fast (``quick_http``: no client-side retries, 10 s timeout) and are tried
    ``attempts`` times: with the server down that is about 1.5 s, with one that never answers
    about ``attempts`` x 10 s. An MLflow outage never ends or holds a sweep; the caller keeps
    what was not sent (``service.tracking.outbox``). A call that succeeds after
    ``SLOW_TRACKING_S`` or more is told to ``log`` too: a sweep or trial that stalled says why.
    """
    started = time.monotonic()
    try:
        with quick_http():
            result = retrying(call, attempts)
    except Exception as error:
        log(f"tracking: {what} waits for MLflow: {type(error).__name__}: {str(error)[:500]}")
        return None
    waited = time.monotonic() - started
    if waited >= SLOW_TRACKING_S:
        log(f"tracking: {what} took {waited:.1f} s: MLflow was slow to answer")
    return result


# quick_http's users at this moment: the variables are the whole process's, and a sweep's
# driver (callbacks, outbox) and the service (report links) use them from several threads.
_quick_users = 0
_quick_saved: dict[str, str | None] = {}
_quick_lock = threading.Lock()


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """MLflow HTTP requests made inside fail at once (``QUICK_HTTP``); settings restored after.

    MLflow reads these variables on every request, from the process's environment: they are
    set by the first of overlapping users and restored by the last (other threads' requests
    meanwhile fail fast too, which every caller here wants).
    """
    global _quick_users
    with _quick_lock:
        if _quick_users == 0:
            _quick_saved.update({name: os.environ.get(name) for name in QUICK_HTTP})
            os.environ.update(QUICK_HTTP)
        _quick_users += 1
    try:
        yield
    finally:
        with _quick_lock:
            _quick_users -= 1
            if _quick_users == 0:
                for name, value in _quick_saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                _quick_saved.clear()


def artifact_error(client: MlflowClient, run_id: str, artifact: str, error: Exception) -> str:
    """Tag a run with an artifact it does not have and why; the message."""
    message = f"artifact {artifact} was not stored: {error}"
    # When the tracking store is down too, the caller still logs the message (at once: the
    # client's own retries of this tag held a trial's end for minutes).
    with contextlib.suppress(Exception), quick_http():
        client.set_tag(run_id, f"{ARTIFACT_ERROR_TAG}.{artifact}", str(error)[:5000])
    return message
