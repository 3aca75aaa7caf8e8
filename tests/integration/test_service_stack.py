"""End to end: the compose services as processes, the smoke grid submitted over HTTP.

PostgreSQL, the MLflow server on it, a Ray head and a second node (``ray start``, Ray's token
on) and ``dmsweep serve`` (token from a file, store on PostgreSQL) are started as the compose
file starts them (tests/integration/stack.py). The smoke grid is submitted over HTTP with the
token, runs as a Ray job, and its runs are found through MLflow's REST API. Then the service is
restarted while a sweep runs on Ray: it reports the sweep's true state and can cancel it, and
the sweep can be resumed to its end. First, the Ray nodes' healthchecks of docker-compose.yml
are run as written against the stack's head and worker, with Ray's token auth on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from ray.job_submission import JobStatus

from tests.support import REPO

SMOKE_CELLS = {
    ("mixup", "mce"),
    ("mixup", "dm_ce"),
    ("cutmix", "mce"),
    ("cutmix", "dm_ce"),
}


def _flag(argv: list[str], name: str) -> str:
    """The value of ``--name=VALUE`` or ``--name VALUE`` in a command line."""
    for index, arg in enumerate(argv):
        if arg == name:
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {argv}")


def test_the_compose_healthchecks_of_the_ray_nodes_pass_with_token_auth(stack):
    """Each Ray node's ``healthcheck.test`` of docker-compose.yml, run as written.

    In a container the check asks 127.0.0.1 on the port the service's own command gives the
    dashboard (head) or the dashboard agent (worker); the stack's nodes listen on free ports
    instead, so each URL's port is mapped to the stack's: the one its ``ray start`` was given
    for the same flag. Nothing else is changed (the tests use no compose variable), and the
    check runs without any token in its environment, as curl does in the container.
    """
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    nodes = {"ray-head": stack.head, "ray-worker": stack.worker, "ray-worker-gpu": stack.worker}
    flags = {"ray-head": "--dashboard-port", "ray-worker": "--dashboard-agent-listen-port"}
    flags["ray-worker-gpu"] = flags["ray-worker"]
    # token auth is on: the dashboard's API refuses a request without the token
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stack.head.dashboard_url}/api/version", timeout=10)
    assert refused.value.code == 401
    for name, node in nodes.items():
        kind, *argv = services[name]["healthcheck"]["test"]
        assert kind == "CMD" and argv[0] == "curl", (name, argv)
        container_port = int(_flag([str(a) for a in services[name]["command"]], flags[name]))
        stack_port = int(_flag(list(node.service.process.args), flags[name]))
        urls = [arg for arg in argv if arg.startswith("http://")]
        assert [urlsplit(url).port for url in urls] == [container_port], (name, argv)
        mapped = [
            re.sub(rf"^(http://127\.0\.0\.1):{container_port}/", rf"\g<1>:{stack_port}/", arg)
            for arg in argv
        ]
        result = subprocess.run(
            mapped,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (name, mapped, result.stdout, result.stderr)


def test_the_smoke_grid_submitted_over_http_succeeds(served_smoke):
    stack, view = served_smoke
    assert view["state"] == "succeeded", view
    assert view["trials"] == {"done": 4, "running": 0, "failed": 0, "total": 4}
    assert view["best"]["val_top1"] > 0
    assert view["mlflow_run_url"].startswith(f"{stack.mlflow.url}/#/experiments/")
    job = stack.ray_jobs().get_job_info(view["ray_job_id"])
    assert job.status == JobStatus.SUCCEEDED
    assert "service.cli run" in job.entrypoint and view["id"] in job.entrypoint
    # The driver ran on the head, not on the worker that had the memory too.
    nodes = httpx.get(
        f"{stack.head.dashboard_url}/api/v0/nodes",
        params={"detail": "true"},
        headers={"Authorization": f"Bearer {stack.ray_token}"},
        timeout=30,
    ).json()["data"]["result"]["result"]
    assert len(nodes) == 2
    (head,) = [n["node_id"] for n in nodes if n["is_head_node"]]
    assert job.driver_node_id == head
    with stack.client() as client:
        listed = client.get("/sweeps").json()
    assert view["id"] in [s["id"] for s in listed]


def mlflow_api(stack, method: str, path: str, **options) -> dict:
    response = httpx.request(method, f"{stack.mlflow.url}/api/2.0/mlflow/{path}", **options)
    assert response.status_code == 200, response.text
    return response.json()


def test_its_runs_are_in_mlflow(served_smoke):
    stack, view = served_smoke
    experiment = mlflow_api(
        stack, "GET", "experiments/get-by-name", params={"experiment_name": "smoke"}
    )["experiment"]
    parent_id = view["mlflow_run_url"].rsplit("/", 1)[1]
    parent = mlflow_api(stack, "GET", "runs/get", params={"run_id": parent_id})["run"]
    assert parent["info"]["experiment_id"] == experiment["experiment_id"]
    assert parent["info"]["status"] == "FINISHED"
    children = mlflow_api(
        stack,
        "POST",
        "runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{parent_id}'",
        },
    )["runs"]
    cells = set()
    for run in children:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        assert {"dataset", "backbone", "method", "loss", "seed"} <= set(tags)
        cells.add((tags["method"], tags["loss"]))
        history = mlflow_api(
            stack,
            "GET",
            "metrics/get-history",
            params={"run_id": run["info"]["run_id"], "metric_key": "val_top1"},
        )["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]
    assert cells == SMOKE_CELLS and len(children) == 4
    # the report was logged to the parent run; artifacts are proxied by the server
    files = mlflow_api(
        stack, "GET", "artifacts/list", params={"run_id": parent_id, "path": "report"}
    )
    names = {f["path"] for f in files.get("files", [])}
    assert {"report/report.md", "report/results.parquet"} <= names, names
    report = httpx.get(
        f"{stack.mlflow.url}/get-artifact",
        params={"path": "report/report.md", "run_uuid": parent_id},
    )
    assert report.status_code == 200 and "mixup" in report.text


def dmsweep(stack, *args: str) -> subprocess.CompletedProcess:
    env = {"DMSWEEP_SERVER": stack.api_url, "DMSWEEP_API_TOKEN": stack.api_token}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**stack.api_env, **env, "COLUMNS": "200"},
        timeout=120,
    )


def test_the_cli_talks_to_the_service(served_smoke):
    stack, view = served_smoke
    status = dmsweep(stack, "status", view["id"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{view['id']}: succeeded" in status.stdout and "4/4 done" in status.stdout
    report = dmsweep(stack, "report", view["id"])
    assert report.returncode == 0 and "mixup" in report.stdout and "cutmix" in report.stdout
    logs = dmsweep(stack, "logs", view["id"])
    assert logs.returncode == 0 and "4 succeeded" in logs.stdout
    denied = subprocess.run(
        [sys.executable, "-m", "service.cli", "status", "--server", stack.api_url],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        timeout=120,
    )
    assert denied.returncode == 1
    assert "server (401): missing credentials" in denied.stdout


def test_the_token_is_never_logged(served_smoke):
    stack, _ = served_smoke
    log = stack.api.log.read_text()
    assert "POST /sweeps" in log  # the log is the right one
    assert stack.api_token not in log
    assert stack.ray_token not in log


def slow_spec() -> str:
    spec = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    spec["name"] = "restart"
    spec["grid"]["method"] = ["mixup"]
    spec["epochs"] = 3
    return yaml.safe_dump(spec)


def _phase_submit_until_running(stack) -> dict:
    """The slow sweep submitted with an idempotency key, running on Ray: the submit's answer."""
    sweep = stack.submit(slow_spec(), **{"Idempotency-Key": "restart-1"})
    stack.wait(sweep["id"], ("running",), timeout_s=300)
    return sweep


def _phase_restart_keeps_the_job(stack, sweep: dict) -> None:
    """The service stopped and started again: the sweep went on on Ray and is still running."""
    stack.stop_api()
    time.sleep(3)  # the sweep goes on on Ray while no service is up
    job_id = sweep["ray_job_id"]
    assert stack.ray_jobs().get_job_status(job_id) == JobStatus.RUNNING
    stack.start_api()
    view = stack.sweep(sweep["id"])
    assert view["state"] == "running" and view["ray_job_id"] == job_id


def _phase_the_same_key_is_the_same_sweep(stack, sweep: dict) -> None:
    """The same key and body after the restart: the same sweep."""
    with stack.client() as client:
        again = client.post(
            "/sweeps",
            content=slow_spec().encode(),
            headers={"Content-Type": "application/yaml", "Idempotency-Key": "restart-1"},
        )
    assert again.status_code == 200 and again.json()["id"] == sweep["id"]


def _phase_cancel_stops_the_ray_job(stack, sweep: dict) -> None:
    with stack.client() as client:
        cancelled = client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    deadline = time.monotonic() + 60
    while stack.ray_jobs().get_job_status(sweep["ray_job_id"]) != JobStatus.STOPPED:
        assert time.monotonic() < deadline, "the Ray job did not stop"
        time.sleep(1)


def _phase_resume_runs_to_the_end(stack, sweep: dict) -> None:
    """Resumed as a second Ray job, the sweep finishes both its trials."""
    with stack.client() as client:
        resumed = client.post(f"/sweeps/{sweep['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["ray_job_id"] == f"dmsweep-{sweep['id']}-2"
    final = stack.wait(sweep["id"], ("succeeded", "failed", "cancelled"))
    assert final["state"] == "succeeded", final
    assert final["trials"] == {"done": 2, "running": 0, "failed": 0, "total": 2}


def test_a_restarted_service_reports_the_true_state_and_can_cancel(served_smoke):
    stack, _ = served_smoke
    sweep = _phase_submit_until_running(stack)
    _phase_restart_keeps_the_job(stack, sweep)
    _phase_the_same_key_is_the_same_sweep(stack, sweep)
    _phase_cancel_stops_the_ray_job(stack, sweep)
    _phase_resume_runs_to_the_end(stack, sweep)
