"""The docker-compose system as plain processes on this machine, for the end-to-end tests.

What each compose service runs, started the same way: PostgreSQL (Debian's, as the postgres
user), ``mlflow server`` on it with proxied artifacts, a Ray head and a second Ray node with
``ray start`` (Ray's token authentication on), and ``dmsweep serve`` with its token from a file,
its store on PostgreSQL and its sweeps on Ray. Everything is ended by its process ids.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from services import (
    BIN,
    MlflowServer,
    Postgres,
    RayNode,
    Service,
    mlflow_server,
    postgres_server,
    ray_auth_env,
    ray_head,
    ray_worker,
    short_temp_dir,
    start_service,
    wait_for_http,
)

from tests.support.ports import free_port

FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Stack:
    """The running system and how to reach it."""

    folder: Path
    postgres: Postgres
    mlflow: MlflowServer
    head: RayNode
    worker: RayNode
    ray_token: str
    api_token: str
    api_env: dict[str, str]
    api_port: int
    api: Service | None = None

    @property
    def api_url(self) -> str:
        """The service's base URL."""
        return f"http://127.0.0.1:{self.api_port}"

    def client(self) -> httpx.Client:
        """An HTTP client of the service, with the token."""
        headers = {"Authorization": f"Bearer {self.api_token}"}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=60)

    def start_api(self) -> None:
        """``dmsweep serve``, as the compose ``api`` service runs it; waits for /healthz."""
        command = [str(BIN / "dmsweep"), "serve", "--host", "127.0.0.1"]
        self.api = start_service(
            "api",
            [*command, "--port", str(self.api_port)],
            self.folder / "api.log",
            env=self.api_env,
        )
        wait_for_http(f"{self.api_url}/healthz", timeout_s=120, service=self.api)

    def stop_api(self) -> None:
        """End the service (SIGTERM, as ``docker compose restart`` does)."""
        if self.api is not None:
            self.api.stop()
            self.api = None

    def submit(self, spec_text: str, **headers: str) -> dict[str, Any]:
        """POST a YAML spec; the new sweep."""
        with self.client() as client:
            response = client.post(
                "/sweeps",
                content=spec_text.encode(),
                headers={"Content-Type": "application/yaml", **headers},
            )
        assert response.status_code == 201, response.text
        return response.json()

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """GET one sweep."""
        with self.client() as client:
            response = client.get(f"/sweeps/{sweep_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, sweep_id: str, states: tuple[str, ...], timeout_s: float = 900) -> dict:
        """Poll the sweep until its state is one of ``states``; its last view."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.sweep(sweep_id)
            if view["state"] in states:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {view['state']}: {view}")
            time.sleep(1)

    def ray_jobs(self):
        """Ray's own jobs client of the head, with Ray's token."""
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {self.ray_token}"}
        return JobSubmissionClient(self.head.dashboard_url, headers=headers)


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    """Start every service; end them all, in reverse order, whatever happens."""
    folder = short_temp_dir("stack")
    (folder / "data").mkdir()
    (folder / "storage").mkdir()
    ray_token = secrets.token_hex(16)
    api_token = secrets.token_urlsafe(24)
    token_file = folder / "api-token"
    token_file.write_text(api_token + "\n")
    # the head hosts trial drivers (trial_slot) and one worker, the second node another
    ray_env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    with (
        postgres_server(folder / "postgres", databases=("mlflow", "dmsweep")) as postgres,
        mlflow_server(folder / "mlflow", postgres.url("mlflow")) as mlflow,
        ray_head(
            folder,
            num_cpus=1,
            resources={"trial_slot": 2},
            auth_token=ray_token,
            env=ray_env,
        ) as head,
        ray_worker(folder, head, num_cpus=1, env=ray_env) as worker,
    ):
        # as compose writes it
        database_url = postgres.url("dmsweep")
        api_env = {
            **ray_auth_env(ray_token),
            "DMSWEEP_DATABASE_URL": database_url,
            "DMSWEEP_RAY_ADDRESS": head.dashboard_url or "",
            # A password in the URI (the server takes any): it must reach no file, command
            # line or answer (tests/integration/test_security_stack.py).
            "DMSWEEP_MLFLOW_URI": mlflow.url.replace(
                "http://", f"http://dmsweep:{secrets.token_urlsafe(12)}@", 1
            ),
            "DMSWEEP_MLFLOW_PUBLIC_URL": mlflow.url,
            "DMSWEEP_DATA_ROOTS": str(folder / "data"),
            "DMSWEEP_STORAGE_ROOT": str(folder / "storage"),
            "DMSWEEP_API_TOKEN_FILE": str(token_file),
            "DMSWEEP_POLL_S": "1",
        }
        api_env.pop("DMSWEEP_API_TOKEN", None)
        stack = Stack(
            folder,
            postgres,
            mlflow,
            head,
            worker,
            ray_token,
            api_token,
            api_env,
            free_port(),
        )
        try:
            stack.start_api()
            yield stack
        finally:
            stack.stop_api()
