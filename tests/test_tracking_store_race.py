"""Sweep drivers opening a fresh default MLflow store at the same moment all succeed.

Issue 12, item 17: two sweeps submitted in a row to a new service both migrated the new SQLite
store, and one failed with ``sqlite3.OperationalError: duplicate column name: step``. Here four
real processes, each doing what a sweep's driver does to the default store under the storage root
when it creates its sweep, start together on a fresh storage root (tests/test_tracking_sweeps.py
checks that ``create_sweep`` prepares the store).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import yaml
from mlflow import MlflowClient

from tests.support import REPO
from tests.support.specs import tiny_spec

DRIVERS = 4
SPEC = tiny_spec(name="race")
# What a sweep's driver does to its tracking store when it creates the sweep (create_sweep:
# prepare the store, then the parent run), without the rest of the engine's imports. Each
# driver imports everything first, says so, and waits for the others before it opens the store:
# the store is opened within milliseconds by all of them.
DRIVER = """
import pathlib, sys, time
from service.tracking.store import default_tracking_uri, prepare_store
from service.tracking.sweep_runs import start_sweep
root, index = pathlib.Path(sys.argv[1]), sys.argv[2]
spec = root.parent / "spec.yaml"
(root.parent / f"ready-{index}").touch()
while not (root.parent / "go").exists():
    time.sleep(0.005)
uri = default_tracking_uri(root)
prepare_store(uri)
start_sweep(uri=uri, experiment="race", sweep_id=f"race-{index}", spec_file=spec, tags={})
"""


def test_four_drivers_open_a_fresh_default_store_at_once(tmp_path):
    root = tmp_path / "runs"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    drivers = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(root), str(index)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(DRIVERS)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < DRIVERS:
            assert time.monotonic() < deadline, "the drivers did not start"
            assert all(d.poll() is None for d in drivers), [d.communicate() for d in drivers]
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [d.communicate(timeout=180)[0] for d in drivers]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
    assert [d.returncode for d in drivers] == [0] * DRIVERS, "\n".join(outputs)[-5000:]
    database = root / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"race-{i}" for i in range(DRIVERS)]
    # Write-ahead logging: readers and the many writers of running sweeps do not block each other.
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


CREATOR = """
import pathlib, sys
from service.tracking.store import default_tracking_uri, prepare_store
prepare_store(default_tracking_uri(pathlib.Path(sys.argv[1])))
"""


def test_a_creator_killed_midway_leaves_a_store_the_next_one_can_make(tmp_path):
    """SIGKILLed while MLflow creates the store's tables (a service or driver killed then): the
    next opener makes a whole store. A half-made store failed every later opener with
    ``index ... already exists``."""
    root = tmp_path / "runs"
    creator = subprocess.Popen([sys.executable, "-c", CREATOR, str(root)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size > 0 for p in root.glob("*mlflow.db*") if p.is_file()):
            assert time.monotonic() < deadline and creator.poll() is None, "no store was begun"
            time.sleep(0.005)
        creator.kill()
        assert creator.wait(timeout=30) == -9
    finally:
        if creator.poll() is None:
            creator.kill()
    assert not (root / "mlflow.db").exists()  # nothing half-made under the store's name
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "go").touch()
    after = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root), "after"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert after.returncode == 0, after.stdout + after.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert run.info.run_name == "race-after"
