"""What the sweep service does, apart from HTTP: take a spec, run it as a Ray job, follow it.

``SweepService`` checks a submitted spec (``service.server.admission``), stores it, and
submits a Ray job running ``dmsweep run`` on it. The sweep's state is the Ray job's, read back
on every request and by a poller; progress (trials done / running / failed, the best result)
is read from the sweep's folder on the shared storage, where the engine writes one record per
finished trial. Nothing here is kept in memory between requests: a restarted service picks its
sweeps up from the store.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from service.results.folder import STATE_FILE, SweepFolder, new_sweep_id
from service.results.metrics import ranking
from service.results.records import TrialState
from service.results.report import sweep_report_markdown
from service.server.admission import admit
from service.server.costs import submitted_plan
from service.server.log_tail import LogSlice, file_slice, log_slice
from service.server.ray_jobs import (
    RayJobs,
    RayRefusedError,
    RayUnavailableError,
    job_env,
    resume_entrypoint,
    run_entrypoint,
    submission_id,
)
from service.server.settings import ServiceSettings
from service.server.store import (
    ACTIVE,
    FINAL,
    STOP_PENDING,
    IdempotencyConflictError,
    SweepRow,
    SweepState,
    SweepStore,
    body_digest,
)
from service.spec.cells import total_trials
from service.spec.model import SweepSpec
from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath
from service.tracking.store import Tracking, default_tracking_uri, prepare_store, reachable
from service.tracking.sweep_runs import run_url

SPECS_DIR = ".specs"  # under the storage root: the resolved spec each job reads
MAX_KEY_LENGTH = 255
# What a submit beyond the active-sweep limit is told to wait: sweeps take minutes to hours,
# so sooner is pointless, and a client retrying sooner only meets the same limit.
RETRY_AFTER_S = 60
# Tests only (the chaos test): the service SIGKILLs itself once it has stored this many new
# rows, between storing a row and submitting its job: the moment a crash is worst.
CRASH_AFTER_ROWS_ENV = "DMSWEEP_TEST_CRASH_AFTER_ROWS"
# A log sent whole by default is bounded: the last 1 MiB; more on request, up to 16 MiB at once.
LOG_TAIL_BYTES = 1 << 20
MAX_LOG_BYTES = 16 << 20
log = logging.getLogger("dmsweep.api")


class SweepNotFoundError(LookupError):
    """No sweep of that id."""


class StateConflictError(RuntimeError):
    """The sweep's state does not allow what was asked."""


class TooManySweepsError(RuntimeError):
    """The service runs as many sweeps as it may (``max_active_sweeps``); try again later."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(
            f"this service already has {active} active sweeps (queued, submitted or running); "
            f"at most {limit} (DMSWEEP_MAX_ACTIVE_SWEEPS). Try again in {RETRY_AFTER_S} s, "
            "or cancel one"
        )
        self.retry_after_s = RETRY_AFTER_S


class SpecStorageError(RuntimeError):
    """The spec file could not be written; nothing was created."""


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
        self._crash_after_rows = int(os.environ.get(CRASH_AFTER_ROWS_ENV) or 0)
        self._rows_stored = 0

    @property
    def tracking_uri(self) -> str:
        """Where the sweeps' jobs track: the setting, else the SQLite store under the root."""
        if self.settings.mlflow_uri:
            return self.settings.mlflow_uri
        root = self.settings.storage_root
        assert isinstance(root, Path)  # a bucket root has its MLflow URI set (ServiceSettings)
        return default_tracking_uri(root)

    def prepare_tracking(self) -> None:
        """Create (and migrate) a SQLite tracking store before any sweep's job opens it."""
        prepare_store(self.tracking_uri)

    def ping_database(self) -> None:
        """Raise when the database cannot be reached (readiness)."""
        self.store.ping()

    def ray_status(self) -> str:
        """``reachable`` or ``unreachable``: Ray's Jobs API, for readiness (never fails it)."""
        return "reachable" if self.jobs.reachable() else "unreachable"

    def mlflow_status(self, timeout_s: float = 2.0) -> str:
        """``reachable``, ``unreachable`` or ``not checked`` (a local store): for readiness."""
        tracking = reachable(self.tracking_uri, timeout_s)
        return "not checked" if tracking is None else ("reachable" if tracking else "unreachable")

    # --- submit ---------------------------------------------------------------------------

    def validate(self, body: bytes, content_type: str | None) -> tuple[SweepSpec, dict]:
        """The spec and its resolved mapping (absolute paths); raises what the API answers."""
        return admit(body, content_type, self.settings, self.jobs)

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
        plan = submitted_plan(spec, self.settings)
        # The spec is written in full under a temporary name first and renamed into place
        # before the row is stored: a queued sweep never points at a missing or half-written
        # spec, whenever the service dies.
        written = self._write_spec_draft(resolved)
        try:
            submitted = self._store_new(spec, body, key, written, plan)
        finally:
            if written.exists():  # refused, or not renamed into place
                written.unlink()
        if not submitted.created:
            return self.view(submitted.row), False
        self._crash_here_when_asked()
        return self.view(self._start_job(submitted.row)), True

    def _crash_here_when_asked(self) -> None:
        """The chaos test's hook (``CRASH_AFTER_ROWS_ENV``); nothing when it is not set."""
        if not self._crash_after_rows:
            return
        with self._naming:
            self._rows_stored += 1
            crash = self._rows_stored == self._crash_after_rows
        if crash:
            log.warning("%s reached: the service kills itself", CRASH_AFTER_ROWS_ENV)
            os.kill(os.getpid(), signal.SIGKILL)

    def _write_spec_draft(self, resolved: dict) -> AnyPath:
        folder = self.settings.storage_root / SPECS_DIR
        text = yaml.safe_dump(resolved, sort_keys=False)
        try:
            if isinstance(folder, BucketPath):  # an object is written whole, fsync'd or not
                draft = folder / f".draft-{uuid.uuid4().hex}.yaml"
                draft.write_text(text)
                return draft
            folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=folder, prefix=".draft-", suffix=".yaml")
            with os.fdopen(handle, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        except OSError as error:
            raise SpecStorageError(
                f"could not write the sweep's spec under {folder}: "
                f"{error.strerror or error}; nothing was created"
            ) from None
        return Path(name)

    def _store_new(
        self, spec: SweepSpec, body: bytes, key: str | None, draft: AnyPath, plan: dict[str, Any]
    ) -> Any:
        """The row of a new sweep, its spec renamed into place first; under the naming lock.

        The active-sweep limit is counted under the same lock, so two submits at once cannot
        both take the last place.
        """
        with self._naming:
            active = self.store.count(ACTIVE)
            if active >= self.settings.max_active_sweeps:
                raise TooManySweepsError(active, self.settings.max_active_sweeps)
            sweep_id = new_sweep_id(spec.name, self.settings.storage_root, taken=self.store.exists)
            metric, mode = ranking(spec)
            row = SweepRow(
                sweep_id=sweep_id,
                name=spec.name,
                spec_text=body.decode("utf-8"),
                body_digest=body_digest(body),
                idempotency_key=key,
                state=SweepState.QUEUED,
                total_trials=total_trials(spec),
                search_metric=metric,
                search_mode=mode,
                summary={"plan": plan},
            )
            spec_file = self._spec_file(sweep_id)
            if isinstance(draft, BucketPath) and isinstance(spec_file, BucketPath):
                draft.replace(spec_file)  # a copy, then the delete
            else:
                os.replace(str(draft), str(spec_file))
            try:
                submitted = self.store.add(row)
            except BaseException:
                spec_file.unlink(missing_ok=True)
                raise
            if not submitted.created:  # a submit with the same key won a race: its sweep
                spec_file.unlink(missing_ok=True)
            return submitted

    def _spec_file(self, sweep_id: str) -> AnyPath:
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
        except RayRefusedError as error:
            # Asking again gets the same answer: the sweep fails with Ray's reason (a resume
            # asks again once the cause is fixed) instead of being retried every poll.
            return self._apply(
                row, state=SweepState.FAILED, message=f"{error}; fix it and resume the sweep"
            )
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
        if now.state == SweepState.CANCELLED:
            # Cancelled while this job was being submitted: the job must not run on. Stopping a
            # job twice (the cancel may have stopped it too) is harmless.
            self.store.mark_stop(row.sweep_id, job_id)
            return self._stop_pending(self.get(row.sweep_id))[0]
        return now

    def _stop_pending(self, row: SweepRow) -> tuple[SweepRow, str | None]:
        """Stop the job a cancel left to stop (``STOP_PENDING``); the sweep, and Ray's error.

        The mark stays until Ray says the job has ended (or never knew it), so that no later
        job of the sweep runs beside it; the poller asks again each pass.
        """
        job_id = (row.summary or {}).get(STOP_PENDING)
        if not job_id:
            return row, None
        try:
            if self.jobs.stop_if_there(job_id):  # a job Ray does not know never reached it
                job = self.jobs.state(job_id)
                if job is not None and job.sweep_state not in FINAL:
                    return row, None  # stopping (SIGTERM, then SIGKILL): asked again later
        except RayUnavailableError as error:
            log.warning("sweep %s: its job %s is stopped later: %s", row.sweep_id, job_id, error)
            return row, str(error)
        self.store.clear_stop(row.sweep_id, job_id)
        return self.get(row.sweep_id), None

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
            earlier = (row.summary or {}).get(STOP_PENDING)
            if earlier and self._stop_pending(row)[0].summary.get(STOP_PENDING):
                # Resumed after a cancel whose job Ray has not confirmed ended: two drivers
                # must never run one sweep's folder at once.
                return self._apply(
                    row, message=f"waits for its earlier job {earlier} to stop, then starts"
                )
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
        """Refresh every sweep that is not finished, and stop jobs of cancels (the poller).

        Each sweep on its own: one that cannot be read (a damaged folder, a strange answer
        from Ray) is logged and the pass goes on with the others.
        """
        for row in self.store.stops_pending():
            try:
                self._stop_pending(row)
            except Exception:
                log.exception("sweep %s: stopping its cancelled job failed", row.sweep_id)
        for row in self.store.all(ACTIVE):
            try:
                self.refresh(row.sweep_id)
            except Exception:
                log.exception("sweep %s: reading its state failed; trying again", row.sweep_id)

    def progress(self, row: SweepRow) -> Progress:
        """Trials done / running / failed, the best result so far, the MLflow run."""
        folder = self._folder(row.sweep_id)
        try:
            state = folder.read_state()
            trials = folder.progress(row.search_metric, row.search_mode)
        except ValueError:
            return Progress(0, 0, 0, row.total_trials, None, None, None)
        except (KeyError, TypeError, OSError) as error:
            # A damaged folder shows no progress; it must not take the list of sweeps down.
            log.warning("sweep %s: its folder cannot be read: %r", row.sweep_id, error)
            return Progress(0, 0, 0, row.total_trials, None, None, None)
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
            # what it costs (``plan``), as made when it was submitted; None for older sweeps
            "plan": (row.summary or {}).get("plan"),
        }

    # --- act ------------------------------------------------------------------------------

    def cancel(self, sweep_id: str) -> SweepRow:
        """Stop the sweep's Ray job; ``StateConflictError`` once the sweep has ended.

        The sweep is cancelled at once, also while Ray does not answer: its job is then
        stopped by the poller as soon as Ray answers (``STOP_PENDING``).
        """
        for _ in range(5):  # again when the poller moved the sweep on meanwhile
            row = self.refresh(sweep_id)
            if row.state not in ACTIVE:
                raise StateConflictError(
                    f"sweep {sweep_id} is {row.state}; only a queued, submitted or "
                    "running sweep can be cancelled"
                )
            if row.state == SweepState.QUEUED or row.ray_job_id is None:
                # Its next job may have reached Ray although the service never learnt so (the
                # submit's answer was lost, or the service died right after it). Its id is
                # known in advance, so it is stopped too; the sweep takes that attempt, so a
                # resume starts the one after it, never the stopped job.
                attempt = row.attempt + 1
                job_id = submission_id(row.sweep_id, attempt)
            else:
                attempt, job_id = row.attempt, row.ray_job_id
            cancelled = self.store.update_if(
                sweep_id,
                row.state,
                row.attempt,
                state=SweepState.CANCELLED,
                message="cancelled by a user",
                attempt=attempt,
                ray_job_id=job_id,
                summary={**(row.summary or {}), STOP_PENDING: job_id},
            )
            if cancelled is None:
                continue
            stopped, ray_error = self._stop_pending(cancelled)
            if ray_error is not None:
                return self.store.update(
                    sweep_id,
                    message=f"cancelled by a user; Ray did not answer, so its job {job_id} "
                    "is stopped once Ray answers",
                )
            return stopped
        raise StateConflictError(f"sweep {sweep_id} kept changing; try again")

    def resume(self, sweep_id: str) -> SweepRow:
        """Start a job that continues a failed or cancelled sweep; finished trials are kept."""
        row = self.refresh(sweep_id)
        if row.state not in (SweepState.FAILED, SweepState.CANCELLED):
            raise StateConflictError(
                f"sweep {sweep_id} is {row.state}; only a failed or cancelled sweep can be resumed"
            )
        earlier = (row.summary or {}).get(STOP_PENDING)
        if earlier and self._stop_pending(row)[0].summary.get(STOP_PENDING):
            # A cancel's job that Ray has not confirmed ended (Ray was away, or it is still
            # stopping): the sweep waits queued and the poller starts it once that job ended,
            # so two drivers never run one sweep's folder at once.
            queued = self._apply(
                row,
                state=SweepState.QUEUED,
                message=f"waits for its earlier job {earlier} to stop, then starts",
            )
            if queued.state != SweepState.QUEUED:
                raise StateConflictError(f"sweep {sweep_id} changed meanwhile; try again")
            return queued
        if row.ray_job_id is not None and not earlier:
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
        # Rendered in memory: the sweep's driver writes report.md itself, maybe right now.
        return sweep_report_markdown(folder.read_spec(), records)

    def logs(
        self,
        sweep_id: str,
        trial: str | None = None,
        offset: int | None = None,
        max_bytes: int = LOG_TAIL_BYTES,
    ) -> LogSlice:
        """The Ray job's output, or with ``trial`` (an id or a name prefix) that trial's log.

        At most ``max_bytes`` of it: from byte ``offset``, or without one the last bytes.
        """
        row = self.get(sweep_id)
        if trial is None:
            if row.ray_job_id is None:
                text = row.message or "the sweep has not been submitted to Ray yet\n"
                return log_slice(text.encode(), offset, max_bytes)
            return log_slice(self.jobs.logs(row.ray_job_id).encode(), offset, max_bytes)
        folder = self._folder(sweep_id)
        try:  # the one lookup, with the prefix rule, that `dmsweep logs ID TRIAL` uses too
            found = folder.find_trial(trial)
        except LookupError as error:
            raise SweepNotFoundError(
                f"{error}; give a trial id, a whole trial name, or a prefix of exactly one"
            ) from None
        return file_slice(folder.log_file(found), offset, max_bytes)
