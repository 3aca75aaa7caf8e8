"""Twenty sweeps submitted at once to a fresh service while everything around it fails.

``dmsweep serve`` with its default stores (SQLite for its rows, the embedded SQLite MLflow store
under the storage root) and a real Ray head, reached through a TCP forwarder the test can cut.
Twenty clients submit one small sweep each at once, each with its own ``Idempotency-Key``,
retrying as a client does when the service does not answer. Meanwhile:

1. the service SIGKILLs itself between storing a row and submitting its job (its test-only hook,
   ``DMSWEEP_TEST_CRASH_AFTER_ROWS``), and is started again (without the hook);
2. Ray is unreachable from the service for a while (the forwarder is cut): submits are queued
   and the poller submits them once Ray is back;
3. the MLflow store goes down and comes back: a writer holds SQLite's write lock for a while (as
   a backup or a migration would) from the moment Ray is back, so the writes of the sweeps then
   starting fail and wait in their outboxes, to be sent later.

Then every sweep must be in a terminal or resumable state, none duplicated, each MLflow run must
hold its own sweep's metrics only, and ``dmsweep resume`` must finish every resumable one. All
twenty sweeps share one spec name, so one MLflow experiment and sweep ids named in the same
seconds: the collisions of issue 12's items 9, 15 and 17 are all in play.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

import httpx
import yaml
from mlflow import MlflowClient
from services import BIN, ray_head, start_service, wait_for_http
from sweep_helpers import tiny_spec

from service.sweep.ray_setup import free_local_port
from tests.support import REPO
from tests.support.tcp_proxy import tcp_proxy

SWEEPS = 20
CRASH_AT_ROW = 6
EPOCHS = 1
RAY_CUT_S = 5
# Longer than a write waits for SQLite's lock (MLflow's busy timeout, 20 s): writes begun early in
# it fail and are tried again, or wait in their sweeps' outboxes; later ones are held.
MLFLOW_LOCK_S = 25
HELD_S = 10  # this long a pause inside the outage, where seconds are the rule: a held write
# The head holds 8 sweep drivers at once (each declares 1.5 GiB of Ray's memory resource, see
# service/server/ray_jobs.py): the other sweeps wait PENDING on Ray, as on a busy cluster.
HEAD_MEMORY = 12 * 2**30
TERMINAL = ("succeeded", "failed", "cancelled")
RESUMABLE = ("failed", "cancelled")
# The training loss differs from seed to seed where the tiny test set's top-1 may not.
LOG_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
EPOCH_LINE = re.compile(r" epoch (\d+): train_loss (\S+?),")
# A write that waited (service.tracking.store.best_effort), told with the time it ended: a
# driver's warning or a trial's log line.
HELD_WRITE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) .*?tracking: .* took ([0-9.]+) s: MLflow was slow",
    re.MULTILINE,
)


def chaos_spec(seed: int) -> str:
    """One trial of the small CNN on tiny synthetic images; its own seed, so its own metrics."""
    spec = tiny_spec(
        "chaos",
        grid={"method": ["mixup"], "loss": ["dm_ce"], "seeds": [seed]},
        epochs=EPOCHS,
        data={
            "synthetic": {
                "num_classes": 4,
                "image_size": 16,
                "synthetic_images": {"train": 128, "test": 64},
            }
        },
    )
    return yaml.safe_dump(spec, sort_keys=False)


class Api:
    """``dmsweep serve`` on a fixed port, started again by the test after it dies."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.port = free_local_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {env['DMSWEEP_API_TOKEN']}"}
        self.process = None
        self.starts = 0

    def start(self, **extra_env: str) -> None:
        command = [str(BIN / "dmsweep"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = start_service(
            "api", command, self.folder / "api.log", env={**self.env, **extra_env}
        )
        self.starts += 1
        wait_for_http(f"{self.url}/healthz", timeout_s=120, service=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def request(self, method: str, path: str, **options) -> httpx.Response:
        headers = {**self.headers, **options.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **options)

    def sweeps(self) -> list[dict]:
        response = self.request("GET", "/sweeps", params={"limit": 500})
        assert response.status_code == 200, response.text
        return response.json()


def submit_until_answered(service: Api, key: str, body: str, deadline: float) -> dict:
    """POST the spec until the service answers it, as a client that keeps its key does."""
    while time.monotonic() < deadline:
        try:
            response = service.request(
                "POST",
                "/sweeps",
                content=body.encode(),
                headers={"Content-Type": "application/yaml", "Idempotency-Key": key},
            )
        except httpx.TransportError:  # the service is down (killed, not yet started again)
            time.sleep(0.5)
            continue
        if response.status_code in (200, 201):
            return response.json()
        assert response.status_code >= 500, f"{key}: {response.status_code} {response.text}"
        time.sleep(0.5)
    raise AssertionError(f"{key} was never answered")


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def hold_the_write_lock(database: Path, seconds: float) -> None:
    """Keep SQLite's write lock on MLflow's store: every writer fails once its wait is over."""
    connection = sqlite3.connect(database, timeout=60, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        connection.execute("COMMIT")
    finally:
        connection.close()


def _phase_submit_through_a_crash_and_a_partition(service, proxy) -> dict[str, str]:
    """Twenty submits at once; the service dies at row ``CRASH_AT_ROW`` and comes back while Ray
    is cut off for ``RAY_CUT_S``: the sweep id each key was given."""
    deadline = time.monotonic() + 240
    with ThreadPoolExecutor(SWEEPS) as pool:
        answers = {
            f"chaos-{i}": pool.submit(
                submit_until_answered, service, f"chaos-{i}", chaos_spec(i), deadline
            )
            for i in range(SWEEPS)
        }
        assert service.process.process.wait(timeout=120) == -9  # the hook's SIGKILL
        proxy.cut()
        service.start()  # without the hook
        cut_until = time.monotonic() + RAY_CUT_S
        ids = {key: answer.result()["id"] for key, answer in answers.items()}
        readiness = service.request("GET", "/readyz").json()
    # Ready all the same: the sweeps wait queued for Ray.
    assert readiness["status"] == "ready" and readiness["ray"] == "unreachable", readiness
    queued = [s for s in service.sweeps() if s["state"] == "queued"]
    time.sleep(max(0.0, cut_until - time.monotonic()))
    proxy.restore()
    assert queued, "no sweep waited for Ray"
    return ids


def _phase_mlflow_down_while_sweeps_start(storage: Path) -> tuple[float, float]:
    """The MLflow store refuses every write for ``MLFLOW_LOCK_S`` from the moment a driver is
    creating its sweep (its spec is in its folder, Tune has not started); the outage's start
    and end (epoch seconds)."""

    def creating() -> bool:
        return any(
            (folder / "spec.yaml").is_file() and not (folder / ".validate_storage_marker").exists()
            for folder in storage.glob("chaos-*")
        )

    deadline = time.monotonic() + 240
    while not creating():
        assert time.monotonic() < deadline, "no driver began creating its sweep"
        time.sleep(0.02)
    started = time.time()
    hold_the_write_lock(storage / "mlflow.db", MLFLOW_LOCK_S)
    return started, time.time()


def _held_by(text: str, start: float, end: float) -> bool:
    """A log (a driver's, a trial's) says that a write waited ``HELD_S`` or more of the outage
    for MLflow, or that its writes wait for MLflow still (sent later)."""
    if "waits for MLflow" in text or "wait for the store" in text:
        return True
    for stamp, seconds in HELD_WRITE.findall(text):
        told = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        began, ended = told.timestamp() - float(seconds), told.timestamp() + 1  # 1 s stamps
        if min(ended, end) - max(began, start) >= HELD_S:
            return True
    return False


def _check_the_outage_held_some_sweep(service, storage: Path, outage, ids: dict) -> None:
    """Some sweep met the outage and went on: a driver or a trial says that a write of theirs
    waited ``HELD_S`` or more of the outage for MLflow (a driver creating its sweep), or that
    its writes wait for MLflow (sent later: ``_check_each_run_holds_its_own_sweeps_metrics``),
    or a trial's log has such a gap inside the outage."""
    start, end = outage
    for sweep_id in ids.values():  # the drivers' output: their Ray jobs' logs
        response = service.request("GET", f"/sweeps/{sweep_id}/logs")
        assert response.status_code == 200, response.text
        if _held_by(response.text, start, end):
            return
    for log in storage.glob("*/logs/*.log"):
        text = log.read_text()
        if _held_by(text, start, end):
            return
        times = [
            datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            for line in text.splitlines()
            if LOG_STAMP.match(line)
        ]
        for before, after in pairwise(t.timestamp() for t in times):
            if after - before >= HELD_S and start - 1 <= before and after <= end + 2:
                return
    raise AssertionError(f"no sweep met the MLflow outage ({start:.0f} to {end:.0f})")


def _phase_all_end_and_the_resumable_are_resumed(service, ids: dict[str, str]) -> dict:
    def all_ended():
        sweeps = {s["id"]: s for s in service.sweeps()}
        return sweeps if all(sweeps[i]["state"] in TERMINAL for i in ids.values()) else None

    ended = wait_for(all_ended, 600, "every sweep to end")
    env = {"DMSWEEP_SERVER": service.url, "DMSWEEP_API_TOKEN": service.env["DMSWEEP_API_TOKEN"]}
    for sweep_id in [i for i in ids.values() if ended[i]["state"] in RESUMABLE]:
        resumed = subprocess.run(
            [sys.executable, "-m", "service.cli", "resume", sweep_id],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", **env, "COLUMNS": "200"},
            timeout=120,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return wait_for(all_ended, 300, "every resumed sweep to end")


def _check_none_duplicated(service, storage: Path, ids: dict[str, str]) -> None:
    """One sweep per key, one row and one folder per sweep; the same key answers the same."""
    listed = [s["id"] for s in service.sweeps()]
    assert sorted(listed) == sorted(ids.values()) and len(set(listed)) == SWEEPS
    folders = [p.name for p in storage.iterdir() if (p / "sweep.json").is_file()]
    assert sorted(folders) == sorted(listed)
    again = submit_until_answered(service, "chaos-0", chaos_spec(0), time.monotonic() + 30)
    assert again["id"] == ids["chaos-0"]


def _check_each_run_holds_its_own_sweeps_metrics(storage: Path, ids: dict[str, str]) -> None:
    """The parent run of each sweep has one child, tagged with the sweep, whose training loss per
    epoch is what that sweep's trial logged (each sweep trains its own seed)."""
    from service.results.folder import SweepFolder
    from service.sweep.callbacks import send_pending

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    losses = set()
    for sweep_id in ids.values():
        folder = SweepFolder(storage / sweep_id)
        send_pending(folder)  # what waited while the store was locked, as `resume` sends it
        state = folder.read_state().tracking
        assert state is not None and state["parent_run_id"], sweep_id
        runs = client.search_runs(
            [state["experiment_id"]],
            filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'",
        )
        [child] = runs
        assert child.data.tags["dmsweep.sweep_id"] == sweep_id
        [record] = folder.records()
        assert child.data.tags["dmsweep.trial_id"] == record.trial_id
        logged = {
            int(epoch): float(loss)
            for epoch, loss in EPOCH_LINE.findall(folder.log_file(record.trial_id).read_text())
        }
        history = client.get_metric_history(child.info.run_id, "train_loss")
        # A run made after the outage carries the trial's final metrics (engine.finish).
        steps = {m.step for m in history}
        assert EPOCHS in steps and steps <= set(logged), (sweep_id, history)
        for metric in history:
            assert f"{metric.value:.4g}" == f"{logged[metric.step]:.4g}", (sweep_id, history)
        losses.add(tuple(sorted(logged.items())))
    assert len(losses) == SWEEPS  # each sweep's own numbers: a mix-up would show


def test_twenty_sweeps_survive_a_crash_a_partition_and_an_mlflow_outage(tmp_path):
    storage, data = tmp_path / "storage", tmp_path / "data"
    storage.mkdir()
    data.mkdir()
    env = {
        "DMSWEEP_STORAGE_ROOT": str(storage),
        "DMSWEEP_DATA_ROOTS": str(data),
        "DMSWEEP_API_TOKEN": secrets.token_urlsafe(32),
        "DMSWEEP_MAX_ACTIVE_SWEEPS": str(SWEEPS),
        "DMSWEEP_POLL_S": "1",
    }
    with ray_head(tmp_path, num_cpus=2, memory_bytes=HEAD_MEMORY) as head:
        dashboard = head.dashboard_url.rsplit(":", 1)
        with tcp_proxy(("127.0.0.1", int(dashboard[1]))) as proxy:
            service = Api(tmp_path, {**env, "DMSWEEP_RAY_ADDRESS": proxy.url})
            service.start(DMSWEEP_TEST_CRASH_AFTER_ROWS=str(CRASH_AT_ROW))
            try:
                ids = _phase_submit_through_a_crash_and_a_partition(service, proxy)
                outage = _phase_mlflow_down_while_sweeps_start(storage)
                _phase_all_end_and_the_resumable_are_resumed(service, ids)
                _check_the_outage_held_some_sweep(service, storage, outage, ids)
                final = {s["id"]: s for s in service.sweeps()}
                assert {final[i]["state"] for i in ids.values()} == {"succeeded"}, final
                _check_none_duplicated(service, storage, ids)
            finally:
                service.stop()
    assert service.starts == 2
    _check_each_run_holds_its_own_sweeps_metrics(storage, ids)
