"""Readiness fails when the service's database (PostgreSQL) goes away; liveness does not.

Issue 12, item 7: ``/readyz`` is 503 only without the database, and reports Ray's and MLflow's
reachability without failing; ``/healthz`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import signal

import httpx
from services import postgres_server

from tests.support.api_server import Served


def test_readiness_fails_only_without_the_database(tmp_path):
    with postgres_server(tmp_path, databases=("dmsweep",)) as pg:
        served = Served(tmp_path)  # its Ray address is a closed port
        served.settings = dataclasses.replace(served.settings, database_url=pg.url("dmsweep"))
        served.start()
        try:
            with httpx.Client(base_url=served.url, timeout=60) as client:
                ready = client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["ray"] == "unreachable"
                pg.service.stop(signal.SIGINT)
                ready = client.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.json()["status"] == "unready"
                assert "password" not in ready.text and pg.url("dmsweep") not in ready.text
                assert client.get("/healthz").status_code == 200
        finally:
            served.stop()
