"""Sweeps as Ray Jobs: submit, read the state of, stop and read the logs of a sweep's job.

A sweep's job runs the same engine as ``dmsweep run`` (``python -m service.cli run SPEC
--sweep-id ID ...``) on the cluster's head; ``resume`` runs ``dmsweep resume``. The submission
id is chosen here (``dmsweep-<sweep id>-<attempt>``), so a service that restarts finds its jobs
again from its own rows.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from typing import Any

import httpx
from ray.job_submission import JobStatus, JobSubmissionClient

from service.server.store import SweepState

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


@dataclass(frozen=True)
class JobState:
    """What the job server says of a job."""

    sweep_state: SweepState
    message: str | None


def submission_id(sweep_id: str, attempt: int) -> str:
    """The Ray job id of a sweep's ``attempt``-th job (1: the run, 2+: resumes)."""
    return f"dmsweep-{sweep_id}-{attempt}"


def run_entrypoint(
    spec_file: str, sweep_id: str, storage_root: str, tracking_uri: str | None
) -> str:
    """The shell command of a sweep's first job: ``dmsweep run`` on the stored spec."""
    command = [sys.executable, "-m", "service.cli", "run", spec_file, "--sweep-id", sweep_id]
    command += ["--storage-path", storage_root, "--address", "auto"]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    return shlex.join(command)


def resume_entrypoint(sweep_id: str, storage_root: str) -> str:
    """The shell command of a resume: ``dmsweep resume`` of the sweep's folder."""
    command = [sys.executable, "-m", "service.cli", "resume", sweep_id]
    return shlex.join([*command, "--storage-path", storage_root, "--address", "auto"])


class RayJobs:
    """The cluster's job server, reached over HTTP with Ray's token when the cluster uses one."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._client: JobSubmissionClient | None = None

    def _jobs(self) -> JobSubmissionClient:
        if self._client is None:
            try:
                self._client = JobSubmissionClient(self.address, headers=self._headers)
            except Exception as error:  # the client raises bare exceptions on connection errors
                raise RayUnavailableError(
                    f"the Ray job server at {self.address} did not answer: {error}"
                ) from None
        return self._client

    def _call(self, what: str, call: Any) -> Any:
        try:
            return call(self._jobs())
        except RayUnavailableError:
            raise
        except Exception as error:
            self._client = None  # reconnect next time (the head may have restarted)
            raise RayUnavailableError(f"{what} at {self.address} failed: {error}") from None

    def submit(self, job_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        """Start a job with a known id; a job of that id already there is left as it is.

        No runtime env is given: the engine sets its own in ``ray.init``, and Ray refuses to
        merge two that name the same variable.
        """
        if self.state(job_id) is not None:
            return  # the submit reached Ray before (the service died before storing that)
        self._call(
            "submitting the job",
            lambda jobs: jobs.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                metadata=metadata,
            ),
        )

    def state(self, job_id: str) -> JobState | None:
        """The job's state, or None when the cluster does not know the job."""

        def read(jobs: JobSubmissionClient) -> JobState | None:
            try:
                info = jobs.get_job_info(job_id)
            except RuntimeError as error:  # 404: "Job ... does not exist"
                if "does not exist" in str(error):
                    return None
                raise
            return JobState(SWEEP_STATE[info.status], info.message)

        return self._call("reading the job's state", read)

    def nodes(self) -> list[dict[str, float]]:
        """The total resources of each live node (the dashboard's state API)."""
        try:
            response = httpx.get(
                f"{self.address.rstrip('/')}/api/v0/nodes",
                params={"limit": 10_000, "detail": "true"},
                headers=self._headers,
                timeout=10,
            )
            response.raise_for_status()
            listed = response.json()["data"]["result"]["result"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as error:
            raise RayUnavailableError(
                f"reading the nodes at {self.address} failed: {error}"
            ) from None
        return [n["resources_total"] for n in listed if n.get("state") == "ALIVE"]

    def stop(self, job_id: str) -> None:
        """Ask the job to stop (Ray sends SIGTERM, then SIGKILL)."""
        self._call("stopping the job", lambda jobs: jobs.stop_job(job_id))

    def logs(self, job_id: str) -> str:
        """The job's driver output so far."""
        return self._call("reading the job's logs", lambda jobs: jobs.get_job_logs(job_id))
