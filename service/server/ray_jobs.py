"""Sweeps as Ray Jobs: submit, read the state of, stop and read the logs of a sweep's job.

A sweep's job runs the same engine as ``dmsweep run`` (``python -m service.cli run SPEC
--sweep-id ID ...``) on the cluster's head; ``resume`` runs ``dmsweep resume``. The submission
id is chosen here (``dmsweep-<sweep id>-<attempt>``), so a service that restarts finds its jobs
again from its own rows.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
from ray.job_submission import JobStatus

from service.server.store import SweepState
from service.spec.capacity import HEAD_RESOURCE
from service.tracking.uri import TRACKING_URI_ENV

# Ray job states to the service's sweep states.
SWEEP_STATE = {
    JobStatus.PENDING: SweepState.SUBMITTED,
    JobStatus.RUNNING: SweepState.RUNNING,
    JobStatus.SUCCEEDED: SweepState.SUCCEEDED,
    JobStatus.FAILED: SweepState.FAILED,
    JobStatus.STOPPED: SweepState.CANCELLED,
}


class RayUnavailableError(RuntimeError):
    """The job server did not answer; the message says where it was asked."""


class RayRefusedError(RuntimeError):
    """The job server answered and refused the job for good (asking again gets the same no)."""


# Answers to a submit that say "not now" rather than "never": 404 while the dashboard's job
# module is still starting, 408 and 429 from the server or a proxy in front of it.
TRANSIENT_CLIENT_ERRORS = frozenset({404, 408, 429})
# What each sweep's driver (the job's entrypoint, ``dmsweep run``) holds on its node while it
# runs, declared to Ray so that the drivers of many sweeps cannot overcommit a node: Ray starts
# a job only where this much of its ``memory`` resource is free, and queues it (PENDING) until
# then. Memory, not a CPU: a driver mostly waits on its trials, and a CPU it held would be one
# its own trials could not have (with every CPU held by drivers, no trial could start at all).
# A smoke sweep's driver peaked at 1.0 GiB of resident memory (torch, Ray, MLflow imported).
DRIVER_MEMORY_BYTES = 3 * 2**29  # 1.5 GiB
# ... and on the head: Ray 2.60 pins a job's driver to the head only while the job asks for no
# resource, and a driver on a worker would hold a GPU node up (no autoscaler could give it
# back) without the head's settings (its RayCluster's name, a service account). A sliver of
# the resource Ray gives the head alone keeps it there.
DRIVER_RESOURCES = {HEAD_RESOURCE: 0.001}


@dataclass(frozen=True)
class JobState:
    """What the job server says of a job."""

    sweep_state: SweepState
    message: str | None


def submission_id(sweep_id: str, attempt: int) -> str:
    """The Ray job id of a sweep's ``attempt``-th job (1: the run, 2+: resumes)."""
    return f"dmsweep-{sweep_id}-{attempt}"


def run_entrypoint(spec_file: str, sweep_id: str, storage_root: str) -> str:
    """The shell command of a sweep's first job: ``dmsweep run`` on the stored spec.

    The tracking URI is not in it (Ray shows entrypoints to anyone who reads its jobs, and the
    URI may hold a password): ``job_env`` passes it in the job's environment.
    """
    command = [sys.executable, "-m", "service.cli", "run", spec_file, "--sweep-id", sweep_id]
    command += ["--storage-path", storage_root, "--address", "auto"]
    return shlex.join(command)


def job_env(tracking_uri: str | None) -> dict[str, str]:
    """The variables of a sweep's job: its tracking URI, read by ``dmsweep run`` and ``resume``.

    Ray hands a job's runtime env to every worker of the job, where the trials log to MLflow.
    """
    return {TRACKING_URI_ENV: tracking_uri} if tracking_uri else {}


def resume_entrypoint(sweep_id: str, storage_root: str) -> str:
    """The shell command of a resume: ``dmsweep resume`` of the sweep's folder."""
    command = [sys.executable, "-m", "service.cli", "resume", sweep_id]
    return shlex.join([*command, "--storage-path", storage_root, "--address", "auto"])


# Every call to the job server is bounded: Ray 2.60's JobSubmissionClient sends its requests
# without a timeout, so a head that accepts connections and never answers would hold the
# service's request threads for good (tests/test_api_hung_ray.py). The documented Jobs REST API
# is called directly instead.
TIMEOUT_S = 5.0
# After a call that timed out or could not connect, calls fail at once for this long: a request
# (and the poller) pays for a hung head once, not once per sweep.
BACKOFF_S = 5.0


class RayJobs:
    """The cluster's job server, reached over HTTP with Ray's token when the cluster uses one."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._down_until = 0.0
        self._down_reason = ""

    def _request(self, what: str, method: str, path: str, **options: Any) -> httpx.Response:
        """One bounded request; ``RayUnavailableError`` when the server does not answer."""
        if time.monotonic() < self._down_until:
            raise RayUnavailableError(
                f"{what} at {self.address} was not tried: {self._down_reason}"
            )
        try:
            return httpx.request(
                method,
                f"{self.address.rstrip('/')}{path}",
                headers=self._headers,
                timeout=self.timeout_s,
                **options,
            )
        except httpx.HTTPError as error:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            self._down_reason = f"the job server did not answer ({reason})"
            self._down_until = time.monotonic() + self.backoff_s
            raise RayUnavailableError(f"{what} at {self.address} failed: {reason}") from None

    def _failure(self, what: str, response: httpx.Response) -> str:
        """What the job server answered to a request it did not take, for the error raised."""
        hint = ""
        if response.status_code in (401, 403):
            # The sweeps wait queued until the service is restarted with the right token.
            hint = (
                "; Ray's token auth is on: give the service the token the head was started with "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token of the user running "
                "dmsweep serve) and restart it"
            )
        return (
            f"{what} at {self.address} failed: {response.status_code} "
            f"{response.text.strip()[-500:]}{hint}"
        )

    def _json(self, what: str, method: str, path: str, **options: Any) -> Any:
        response = self._request(what, method, path, **options)
        if response.status_code != 200:
            raise RayUnavailableError(self._failure(what, response))
        try:
            return response.json()
        except ValueError:
            raise RayUnavailableError(
                f"{what} at {self.address} failed: the answer is not JSON"
            ) from None

    def reachable(self) -> bool:
        """Whether the job server answers now (one bounded request; readiness)."""
        try:
            self._json("reading Ray's version", "GET", "/api/version")
        except RayUnavailableError:
            return False
        return True

    def submit(
        self,
        job_id: str,
        entrypoint: str,
        metadata: dict[str, str],
        env: dict[str, str] | None = None,
    ) -> None:
        """Start a job with a known id; a job of that id already there is left as it is.

        ``env``: the job's environment variables (``job_env``), its only runtime env. The
        engine's ``ray.init`` adds its own, which Ray merges as long as no variable is named
        by both (``service.sweep.ray_setup``).
        """
        if self.state(job_id) is not None:
            return  # the submit reached Ray before (the service died before storing that)
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": job_id,
            "metadata": metadata,
            "entrypoint_memory": DRIVER_MEMORY_BYTES,
            "entrypoint_resources": DRIVER_RESOURCES,
        }
        if env:
            body["runtime_env"] = {"env_vars": env}
        response = self._request("submitting the job", "POST", "/api/jobs/", json=body)
        if response.status_code == 200:
            return
        if "already exists" in response.text:
            return  # another request of this service submitted the same attempt just now
        if 400 <= response.status_code < 500 and response.status_code not in (
            TRANSIENT_CLIENT_ERRORS
        ):
            raise RayRefusedError(
                f"the Ray job server at {self.address} refused the job: {response.status_code} "
                f"{response.text.strip()[-500:]}"
            )
        raise RayUnavailableError(self._failure("submitting the job", response))

    def state(self, job_id: str) -> JobState | None:
        """The job's state, or None when the cluster does not know the job."""
        response = self._request("reading the job's state", "GET", f"/api/jobs/{job_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RayUnavailableError(self._failure("reading the job's state", response))
        try:
            info = response.json()
            return JobState(SWEEP_STATE[JobStatus(info["status"])], info.get("message"))
        except (ValueError, KeyError, TypeError) as error:
            raise RayUnavailableError(
                f"reading the job's state at {self.address} failed: {error!r}"
            ) from None

    def nodes(self) -> list[dict[str, float]]:
        """The total resources of each live node (the dashboard's state API)."""
        listed = self._json(
            "reading the nodes",
            "GET",
            "/api/v0/nodes",
            params={"limit": 10_000, "detail": "true"},
        )
        try:
            result = listed["data"]["result"]["result"]
            return [n["resources_total"] for n in result if n.get("state") == "ALIVE"]
        except (KeyError, TypeError) as error:
            raise RayUnavailableError(
                f"reading the nodes at {self.address} failed: {error!r}"
            ) from None

    def stop(self, job_id: str) -> None:
        """Ask the job to stop (Ray sends SIGTERM, then SIGKILL)."""
        self._json("stopping the job", "POST", f"/api/jobs/{job_id}/stop")

    def stop_if_there(self, job_id: str) -> bool:
        """Stop the job if the cluster knows it; False when it does not (404)."""
        response = self._request("stopping the job", "POST", f"/api/jobs/{job_id}/stop")
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise RayUnavailableError(self._failure("stopping the job", response))
        return True

    def logs(self, job_id: str) -> str:
        """The job's driver output so far (all of it: Ray's REST API has no range)."""
        logs = self._json("reading the job's logs", "GET", f"/api/jobs/{job_id}/logs")
        return str(logs.get("logs", "")) if isinstance(logs, dict) else ""
