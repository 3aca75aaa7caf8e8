"""A Ray that accepts connections and never answers cannot freeze the sweep service.

Issue 12, item 7. The service's Ray address is a real TCP server that accepts every connection
and never says a word. Every endpoint must still answer within a bound (the job server's
timeout, once, and then at once while Ray stays away), many at the same time; liveness answers
at once throughout; readiness is ready (the database is there) and says Ray is unreachable
(tests/integration/test_service_readiness.py: readiness without the database).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.server.app import PROBE_TIMEOUT_S
from service.server.ray_jobs import TIMEOUT_S
from tests.support.api_server import AUTH, YAML, Served
from tests.support.specs import tiny_spec_yaml

BOUND_S = TIMEOUT_S + 5  # one timed-out call to Ray, and the request's own work


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: accepts connections, reads nothing, answers nothing."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


@pytest.fixture(scope="module")
def hung(tmp_path_factory) -> Iterator[Served]:
    with silent_server() as address:
        served = Served(tmp_path_factory.mktemp("hung-ray"), ray_address=address)
        served.start()
        yield served
        served.stop()


def spec(name: str) -> str:
    return tiny_spec_yaml(name=name)


def timed(call) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def test_every_endpoint_answers_within_a_bound_while_ray_never_answers(hung):
    with httpx.Client(base_url=hung.url, timeout=120) as client:
        response, took = timed(lambda: client.post("/sweeps", content=spec("hung"), headers=YAML))
        assert response.status_code == 201, response.text
        assert took < BOUND_S, took
        sweep = response.json()
        assert sweep["state"] == "queued"  # waits for Ray, as when Ray is down
        path = f"/sweeps/{sweep['id']}"

        # Many requests at once, each of them needing Ray: none waits on another's call.
        requests = [
            ("GET", path),
            ("GET", "/sweeps"),
            ("GET", f"{path}/logs"),
            ("POST", "/sweeps"),
        ] * 5

        def send(method_path: tuple[str, str]) -> tuple[int, float]:
            method, url = method_path
            body = spec("hung-many") if method == "POST" else None
            with httpx.Client(base_url=hung.url, timeout=120) as own:
                response, took = timed(lambda: own.request(method, url, content=body, headers=YAML))
            return response.status_code, took

        with ThreadPoolExecutor(len(requests)) as pool:
            pending = [pool.submit(send, r) for r in requests]
            # Liveness answers at once while they are in flight.
            live, live_took = timed(lambda: client.get("/healthz"))
            results = [p.result() for p in pending]
        assert live.status_code == 200 and live_took < 1.0, live_took
        assert all(status in (200, 201) for status, _ in results), results
        assert max(took for _, took in results) < BOUND_S, results

        cancelled, took = timed(lambda: client.post(f"{path}/cancel", headers=AUTH))
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert took < BOUND_S, took

        ready, took = timed(lambda: client.get("/readyz"))
        assert ready.status_code == 200, ready.text
        report = ready.json()
        # Unreachable while the client fails fast after a hung call; else the probe's bound.
        assert report.pop("ray") in ("unreachable", f"no answer in {PROBE_TIMEOUT_S:g} s")
        assert report == {"status": "ready", "database": "ok", "mlflow": "reachable"}
        assert took < BOUND_S, took
