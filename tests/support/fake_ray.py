"""A stand-in for Ray's job server (the dashboard's Jobs REST API), for the service's tests.

Only what the sweep service calls: the version, the nodes, and a job's submit, state, stop
and logs. It runs nothing. It lets a test choose what a real cluster does only by chance or
misconfiguration: refuse a job for good, take a submit and lose the answer, report a job in a
given state. Tests that need real jobs use the Ray cluster of tests/integration.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JOB_PATH = re.compile(r"^/api/jobs/([^/]+)(/stop|/logs)?$")


@dataclass
class FakeJobServer:
    """What the fake cluster holds; tests read and change it (under ``lock``)."""

    url: str = ""
    cpus: float = 4.0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {status, message}
    submits: list[dict[str, Any]] = field(default_factory=list)  # every submit body received
    stops: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # ("submit" / "stop", job id)
    logs: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)  # a job id part -> the 400's reason
    lose_answer_once: set[str] = field(default_factory=set)  # job id parts: taken, no answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, job_id: str) -> str | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else str(job["status"])

    def set_status(self, job_id: str, status: str) -> None:
        with self.lock:
            self.jobs[job_id] = {"status": status, "message": None}

    def submitted(self, part: str) -> list[dict[str, Any]]:
        """The submit bodies of jobs whose id contains ``part``."""
        with self.lock:
            return [b for b in self.submits if part in b["submission_id"]]


def _handler(fake: FakeJobServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/api/version":
                self._answer(200, {"ray_version": "fake"})
                return
            if path == "/api/v0/nodes":
                node = {"state": "ALIVE", "resources_total": {"CPU": fake.cpus}}
                self._answer(200, {"data": {"result": {"result": [node]}}})
                return
            match = JOB_PATH.match(path)
            with fake.lock:
                job = fake.jobs.get(match.group(1)) if match else None
                logs = fake.logs.get(match.group(1), "") if match else ""
            if match is None or job is None:
                self._answer(404, "Job does not exist")
            elif match.group(2) == "/logs":
                self._answer(200, {"logs": logs})
            else:
                self._answer(200, job)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/api/jobs/":
                job_id = body["submission_id"]
                reason: str | None
                with fake.lock:
                    fake.submits.append(body)
                    if job_id in fake.jobs:  # as Ray answers a second submit of one id
                        reason = f"Job with submission_id {job_id} already exists."
                    else:
                        reason = next((r for p, r in fake.refuse.items() if p in job_id), None)
                    lost = next((p for p in fake.lose_answer_once if p in job_id), None)
                    if reason is None:
                        fake.jobs[job_id] = {"status": "RUNNING", "message": None}
                        fake.events.append(("submit", job_id))
                    if lost is not None:
                        fake.lose_answer_once.discard(lost)
                if reason is not None:
                    self._answer(400, reason)
                elif lost is not None:
                    self.close_connection = True  # the job is there; its answer never comes
                else:
                    self._answer(200, {"submission_id": job_id})
                return
            match = JOB_PATH.match(self.path)
            if match is None or match.group(2) != "/stop":
                self._answer(404, "Not found")
                return
            with fake.lock:
                job = fake.jobs.get(match.group(1))
                if job is not None:
                    fake.stops.append(match.group(1))
                    fake.events.append(("stop", match.group(1)))
                    job["status"] = "STOPPED"
            if job is None:
                self._answer(404, "Job does not exist")
            else:
                self._answer(200, {"stopped": True})

    return Handler


@contextmanager
def fake_job_server() -> Iterator[FakeJobServer]:
    """A ``FakeJobServer`` listening on a free port of 127.0.0.1."""
    fake = FakeJobServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
