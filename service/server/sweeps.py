"""What the sweep service does, apart from HTTP: take a spec, run it as a Ray job, follow it.

``SweepService`` checks a submitted spec (the same pydantic models as the CLI, then the
service's path policy, then its data), stores it, and submits a Ray job running ``dmsweep run``
on it. The sweep's state is the Ray job's, read back on every request and by a poller;
progress (trials done / running / failed, the best result) is read from the sweep's folder on
the shared storage, where the engine writes one record per finished trial. Nothing here is kept
in memory between requests: a restarted service picks its sweeps up from the store.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.results.folder import STATE_FILE, SweepFolder, new_sweep_id
from service.results.records import TrialState
from service.results.report import write_sweep_report
from service.server.ray_jobs import (
    RayJobs,
    RayUnavailableError,
    job_env,
    resume_entrypoint,
    run_entrypoint,
    submission_id,
)
from service.server.settings import ServiceSettings
from service.server.store import (
    ACTIVE,
    IdempotencyConflictError,
    SweepRow,
    SweepState,
    SweepStore,
    body_digest,
)
from service.spec.capacity import autoscaling_nodes, resource_problems
from service.spec.cells import total_trials
from service.spec.data_check import data_problems
from service.spec.downloads import download_problems
from service.spec.model import SweepSpec
from service.spec.path_policy import path_problems, resolve_paths
from service.spec.reading import parse_spec
from service.tracking.store import Tracking, default_tracking_uri, prepare_store, reachable
from service.tracking.sweep_runs import run_url
from trainers.validation import Problem, describe, problems_of
from trainers.vocabulary import DEFAULT_SEARCH_METRIC

SPECS_DIR = ".specs"  # under the storage root: the resolved spec each job reads
MAX_KEY_LENGTH = 255


class SpecRejectedError(ValueError):
    """The spec is not valid here; ``problems`` say where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(describe(problems))
        self.problems = problems


class SweepNotFoundError(LookupError):
    """No sweep of that id."""


class StateConflictError(RuntimeError):
    """The sweep's state does not allow what was asked."""


@dataclass(frozen=True)
class Progress:
    """Trials of a sweep as its folder records them."""

    done: int
    running: int
    failed: int
    total: int
    best: dict[str, Any] | None
    mlflow_run_url: str | None
    folder: str | None


def _utc(moment: datetime) -> str:
    # SQLite hands datetimes back without their zone; every time stored is UTC
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def check_key(key: str | None) -> str | None:
    """An Idempotency-Key header as stored; a ValueError naming what is allowed."""
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValueError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters")
    return key


class SweepService:
    """Submitted sweeps and their Ray jobs."""

    def __init__(self, settings: ServiceSettings, store: SweepStore, jobs: RayJobs) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        # Only naming a new sweep is serialised here. State changes never hold a lock across
        # a call to Ray: each is applied with ``SweepStore.update_if``, only if no other request
        # changed the sweep while Ray was being asked.
        self._naming = threading.Lock()

    @property
    def tracking_uri(self) -> str:
        """Where the sweeps' jobs track: the setting, else the SQLite store under the root."""
        return self.settings.mlflow_uri or default_tracking_uri(self.settings.storage_root)

    def prepare_tracking(self) -> None:
        """Create (and migrate) a SQLite tracking store before any sweep's job opens it."""
        prepare_store(self.tracking_uri)

    def readiness(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The database (raises when it cannot be reached), Ray's and MLflow's reachability.

        Ray or MLflow being away does not make the service unready: sweeps wait queued for
        Ray, and trials buffer what MLflow does not take.
        """
        self.store.ping()
        ray = self.jobs.reachable()
        tracking = reachable(self.tracking_uri, timeout_s)
        return {
            "database": "ok",
            "ray": "reachable" if ray else "unreachable",
            "mlflow": "not checked"
            if tracking is None
            else ("reachable" if tracking else "unreachable"),
        }

    # --- submit ---------------------------------------------------------------------------

    def validate(self, body: bytes, content_type: str | None) -> tuple[SweepSpec, dict]:
        """The spec and its resolved mapping (absolute paths); raises what the API answers."""
        raw = parse_spec(body, content_type)
        try:
            spec = SweepSpec.model_validate(raw)
        except ValidationError as error:
            raise SpecRejectedError(problems_of(error)) from None
        settings = self.settings
        problems = path_problems(
            spec,
            data_roots=settings.data_roots,
            storage_root=settings.storage_root,
            tracking_uri=settings.mlflow_uri,
        )
        if not settings.allow_downloads:
            problems += download_problems(spec)
        if problems:
            raise SpecRejectedError(problems)
        resolved = resolve_paths(
            raw, spec, data_roots=settings.data_roots, storage_root=settings.storage_root
        )
        spec = SweepSpec.model_validate(resolved)
        data = data_problems(spec)
        if data:
            raise SpecRejectedError(data)
        try:
            nodes = self.jobs.nodes()
        except RayUnavailableError:
            nodes = None  # the sweep waits queued; its job checks again when it starts
        if nodes is not None:
            fits = resource_problems(spec.resources, nodes + autoscaling_nodes())
            if fits:
                raise SpecRejectedError(fits)
        return spec, resolved

    def submit(self, body: bytes, content_type: str | None, key: str | None) -> tuple[dict, bool]:
        """Store and start a sweep; its view and whether it is new (False: a retried submit)."""
        key = check_key(key)
        if key is not None:
            earlier = self.store.by_key(key)
            if earlier is not None:
                if earlier.body_digest != body_digest(body):
                    raise IdempotencyConflictError(key, earlier.sweep_id)
                return self.view(earlier), False
        spec, resolved = self.validate(body, content_type)
        with self._naming:
            sweep_id = new_sweep_id(spec.name, self.settings.storage_root, taken=self.store.exists)
            row = SweepRow(
                sweep_id=sweep_id,
                name=spec.name,
                spec_text=body.decode("utf-8"),
                body_digest=body_digest(body),
                idempotency_key=key,
                state=SweepState.QUEUED,
                total_trials=total_trials(spec),
                search_metric=spec.search.metric if spec.search else DEFAULT_SEARCH_METRIC,
                search_mode=spec.search.mode if spec.search else "max",
            )
            submitted = self.store.add(row)
        if not submitted.created:
            return self.view(submitted.row), False
        spec_file = self._spec_file(sweep_id)
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
        return self.view(self._start_job(submitted.row)), True

    def _spec_file(self, sweep_id: str) -> Path:
        return self.settings.storage_root / SPECS_DIR / f"{sweep_id}.yaml"

    def _folder(self, sweep_id: str) -> SweepFolder:
        return SweepFolder(self.settings.storage_root / sweep_id)

    def _apply(self, row: SweepRow, **changes: Any) -> SweepRow:
        """``changes`` to the sweep as ``row`` was read; the sweep as stored now.

        When another request changed the sweep meanwhile, its change stands and this one is
        dropped (it was based on a state that is gone).
        """
        changed = self.store.update_if(row.sweep_id, row.state, row.attempt, **changes)
        return changed if changed is not None else self.get(row.sweep_id)

    def _start_job(self, row: SweepRow) -> SweepRow:
        """Submit the sweep's next job (its run, or a resume once its folder exists)."""
        attempt = row.attempt + 1
        job_id = submission_id(row.sweep_id, attempt)
        root = str(self.settings.storage_root)
        if (self._folder(row.sweep_id).path / STATE_FILE).is_file():
            entrypoint = resume_entrypoint(row.sweep_id, root)
        else:
            spec_file = str(self._spec_file(row.sweep_id))
            entrypoint = run_entrypoint(spec_file, row.sweep_id, root)
        env = job_env(self.settings.mlflow_uri)  # the URI may hold a password: not in argv
        try:
            self.jobs.submit(job_id, entrypoint, {"dmsweep_sweep": row.sweep_id}, env)
        except RayUnavailableError as error:
            return self._apply(row, state=SweepState.QUEUED, message=str(error))
        started = self.store.update_if(
            row.sweep_id,
            row.state,
            row.attempt,
            state=SweepState.SUBMITTED,
            ray_job_id=job_id,
            attempt=attempt,
            message=None,
        )
        if started is not None:
            return started
        now = self.get(row.sweep_id)
        if now.state == SweepState.CANCELLED and now.ray_job_id != job_id:
            # Cancelled while this job was being submitted: the job must not run on.
            try:
                self.jobs.stop(job_id)
            except RayUnavailableError as error:
                return self.store.update(
                    row.sweep_id, message=f"cancelled; stopping job {job_id} failed: {error}"
                )
        return now

    # --- follow -----------------------------------------------------------------------------

    def get(self, sweep_id: str) -> SweepRow:
        """The stored sweep; ``SweepNotFoundError`` otherwise."""
        row = self.store.get(sweep_id)
        if row is None:
            raise SweepNotFoundError(f"no sweep {sweep_id!r}")
        return row

    def refresh(self, sweep_id: str) -> SweepRow:
        """Read the sweep's state from its Ray job (or submit a queued one)."""
        row = self.get(sweep_id)
        if row.state not in ACTIVE:
            return row
        if row.state == "queued" or row.ray_job_id is None:
            return self._start_job(row)
        try:
            job = self.jobs.state(row.ray_job_id)
        except RayUnavailableError as error:
            return self._apply(row, message=str(error))
        if job is None:
            return self._apply(
                row,
                state=SweepState.FAILED,
                message=f"the Ray cluster at {self.jobs.address} does not know the job "
                f"{row.ray_job_id} (was the cluster replaced?); resume the sweep",
            )
        message = self._outcome(row, job.sweep_state, job.message)
        return self._apply(row, state=job.sweep_state, message=message)

    def _outcome(self, row: SweepRow, state: str, job_message: str | None) -> str | None:
        if state != SweepState.FAILED:
            return job_message if state == SweepState.CANCELLED else None
        try:
            counts = self._folder(row.sweep_id).read_state().counts or {}
        except ValueError:
            return job_message  # the job failed before it created the sweep
        if counts.get(TrialState.FAILED):
            return f"{counts[TrialState.FAILED]} of {row.total_trials} trials failed"
        return job_message

    def refresh_active(self) -> None:
        """Refresh every sweep that is not finished (the poller)."""
        for row in self.store.all(ACTIVE):
            self.refresh(row.sweep_id)

    def progress(self, row: SweepRow) -> Progress:
        """Trials done / running / failed, the best result so far, the MLflow run."""
        folder = self._folder(row.sweep_id)
        try:
            state = folder.read_state()
        except ValueError:
            return Progress(0, 0, 0, row.total_trials, None, None, None)
        trials = folder.progress(row.search_metric, row.search_mode)
        best = None
        if trials.best is not None:
            best = {"trial": trials.best[0], row.search_metric: trials.best[1]}
        ui = self.settings.mlflow_public_url
        url = run_url(Tracking(**state.tracking), ui) if state.tracking else None
        return Progress(
            done=trials.done,
            # Unfinished trials of a sweep that is not running were lost with its driver.
            running=trials.unfinished if row.state == SweepState.RUNNING else 0,
            failed=trials.failed,
            total=row.total_trials,
            best=best,
            mlflow_run_url=url,
            folder=str(folder.path),
        )

    def view(self, row: SweepRow) -> dict[str, Any]:
        """The sweep as the API shows it."""
        progress = self.progress(row)
        return {
            "id": row.sweep_id,
            "name": row.name,
            "state": row.state,
            "message": row.message,
            "trials": {
                "done": progress.done,
                "running": progress.running,
                "failed": progress.failed,
                "total": progress.total,
            },
            "best": progress.best,
            "ray_job_id": row.ray_job_id,
            "mlflow_run_url": progress.mlflow_run_url,
            "folder": progress.folder,
            "created_at": _utc(row.created_at),
            "updated_at": _utc(row.updated_at),
        }

    # --- act ------------------------------------------------------------------------------

    def cancel(self, sweep_id: str) -> SweepRow:
        """Stop the sweep's Ray job; ``StateConflictError`` once the sweep has ended."""
        for _ in range(5):  # again when the poller moved the sweep on meanwhile
            row = self.refresh(sweep_id)
            if row.state not in ACTIVE:
                raise StateConflictError(
                    f"sweep {sweep_id} is {row.state}; only a queued, submitted or "
                    "running sweep can be cancelled"
                )
            if row.ray_job_id is not None and row.state != "queued":
                self.jobs.stop(row.ray_job_id)
            cancelled = self.store.update_if(
                sweep_id,
                row.state,
                row.attempt,
                state=SweepState.CANCELLED,
                message="cancelled by a user",
            )
            if cancelled is not None:
                return cancelled
        raise StateConflictError(f"sweep {sweep_id} kept changing; try again")

    def resume(self, sweep_id: str) -> SweepRow:
        """Start a job that continues a failed or cancelled sweep; finished trials are kept."""
        row = self.refresh(sweep_id)
        if row.state not in (SweepState.FAILED, SweepState.CANCELLED):
            raise StateConflictError(
                f"sweep {sweep_id} is {row.state}; only a failed or cancelled sweep can be resumed"
            )
        if row.ray_job_id is not None:
            job = self.jobs.state(row.ray_job_id)
            if job is not None and job.sweep_state in (
                SweepState.SUBMITTED,
                SweepState.RUNNING,
            ):
                raise StateConflictError(
                    f"sweep {sweep_id}'s job {row.ray_job_id} is still stopping"
                )
        resumed = self._start_job(row)
        if resumed.attempt == row.attempt and resumed.state != SweepState.QUEUED:
            raise StateConflictError(f"sweep {sweep_id} changed meanwhile; try again")
        return resumed

    def report(self, sweep_id: str) -> str:
        """The paper-style table (Markdown) from the trials finished so far."""
        self.get(sweep_id)
        folder = self._folder(sweep_id)
        records = folder.records() if folder.path.is_dir() else []
        if not records:
            raise StateConflictError(f"sweep {sweep_id} has no finished trial yet")
        return write_sweep_report(folder, folder.read_spec(), records)["markdown"].read_text()

    def logs(self, sweep_id: str, trial: str | None = None) -> str:
        """The Ray job's output, or with ``trial`` (an id or a name prefix) that trial's log."""
        row = self.get(sweep_id)
        if trial is None:
            if row.ray_job_id is None:
                return row.message or "the sweep has not been submitted to Ray yet\n"
            return self.jobs.logs(row.ray_job_id)
        folder = self._folder(sweep_id)
        try:
            log = folder.log_file(folder.find_trial(trial))
        except LookupError as error:
            raise SweepNotFoundError(str(error)) from None
        return log.read_text() if log.is_file() else ""
