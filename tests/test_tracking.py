"""The sweep's parent run in MLflow (service/tracking/), on a real local store."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading

from mlflow import MlflowClient

from service.tracking import store
from service.tracking.sweep_runs import start_sweep


def test_a_sweep_starts_when_its_spec_cannot_be_stored_and_the_run_says_why(tmp_path, caplog):
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the artifact store's folder should be\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: broken-store\n")
    with caplog.at_level(logging.WARNING, logger="service.tracking"):
        track = start_sweep(
            uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="broken-store",
            sweep_id="broken-store-1",
            spec_file=spec,
            tags={},
            artifact_location=str(blocker / "broken-store"),
        )
    run = MlflowClient(tracking_uri=track.uri).get_run(track.parent_run_id)
    assert run.info.status == "RUNNING"
    assert str(blocker) in run.data.tags["dmsweep.artifact_error.spec.yaml"]
    assert "artifact spec.yaml was not stored: " in caplog.text
    assert str(blocker) in caplog.text


def test_a_tracking_write_held_by_a_locked_store_says_how_long_it_waited(tmp_path, monkeypatch):
    """A sweep that stalls on MLflow says why: a write held by SQLite's lock is named with its
    wait; one that fails names the error; a quick one is silent."""
    monkeypatch.setattr(store, "SLOW_TRACKING_S", 0.2)
    database = tmp_path / "locked.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()

    def write() -> int:
        with sqlite3.connect(database, timeout=10) as connection:
            return connection.execute("INSERT INTO t VALUES (1)").rowcount

    lines: list[str] = []
    assert store.best_effort(write, "the parent run", log=lines.append) == 1
    release.join()
    holder.close()
    [line] = lines
    took = re.fullmatch(r"tracking: the parent run took (\S+) s: MLflow was slow to answer", line)
    waited = float(took[1])
    assert waited >= 0.4
    assert store.best_effort(write, "a quick write", log=lines.append) == 1
    assert len(lines) == 1

    def refused() -> None:
        raise sqlite3.OperationalError("database is locked")

    assert store.best_effort(refused, "closing the run", log=lines.append, attempts=1) is None
    assert (
        lines[-1]
        == "tracking: closing the run waits for MLflow: OperationalError: database is locked"
    )
