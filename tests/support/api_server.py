"""The sweep service's app on uvicorn in a thread, for tests over real HTTP."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from service.server.app import PROXY_HEADERS, create_app
from service.server.settings import ServiceSettings
from tests.support.ports import free_port

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
YAML = {**AUTH, "Content-Type": "application/yaml"}


class Served:
    """A running app and what it was configured with."""

    def __init__(
        self,
        tmp: Path,
        ray_address: str | None = None,
        ray_token: str | None = None,
        **settings: Any,
    ) -> None:
        self.tmp = tmp
        self.storage = tmp / "storage"
        self.data = tmp / "data"
        (self.data / "cifar10").mkdir(parents=True)
        self.settings = ServiceSettings(
            database_url=f"sqlite:///{tmp / 'service.db'}",
            # by default nothing listens there: accepted sweeps stay queued
            ray_address=ray_address or f"http://127.0.0.1:{free_port()}",
            storage_root=self.storage,
            data_roots=(self.data,),
            mlflow_uri=None,
            api_token=TOKEN,
            ray_token=ray_token,
            poll_s=3600,
        )
        self.settings = replace(self.settings, **settings)  # e.g. trusted_proxies
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        port = free_port()
        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            proxy_headers=PROXY_HEADERS,  # as `dmsweep serve` runs it
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the API did not start")

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def created(self) -> set[str]:
        """Every trace a submit leaves: sweep ids in the store and spec files on disk."""
        with httpx.Client(base_url=self.url, headers=AUTH) as client:
            ids = {s["id"] for s in client.get("/sweeps").json()}
        specs = self.storage / ".specs"
        files = {p.name for p in specs.iterdir()} if specs.is_dir() else set()
        return ids | files
