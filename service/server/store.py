"""The sweep service's store: one row per submitted sweep (SQLAlchemy; SQLite or PostgreSQL).

The row is what the service knows that the Ray cluster does not: the spec as submitted, the
idempotency key of its submit, the Ray job that runs it, and the last state read from that job.
Trial results are not copied here: they stay in the sweep's folder and in MLflow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    Text,
    and_,
    create_engine,
    func,
    or_,
    select,
    text,
)
from sqlalchemy import update as sql_update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from trainers.validation import TextEnum
from trainers.vocabulary import DEFAULT_SEARCH_METRIC


class SweepState(TextEnum):
    """A submitted sweep's state: its Ray job's, or ``queued`` before Ray has taken it."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# In a row's ``summary``: the Ray job id a cancel could not yet stop (Ray was away).
STOP_PENDING = "stop_pending"
ACTIVE = frozenset({SweepState.QUEUED, SweepState.SUBMITTED, SweepState.RUNNING})
FINAL = frozenset({SweepState.SUCCEEDED, SweepState.FAILED, SweepState.CANCELLED})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def body_digest(body: bytes) -> str:
    """SHA-256 of a submitted body: equal bodies under one idempotency key are one sweep."""
    return hashlib.sha256(body).hexdigest()


class _Base(DeclarativeBase):
    pass


class SweepRow(_Base):
    """One submitted sweep."""

    __tablename__ = "sweeps"

    sweep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_text: Mapped[str] = mapped_column(Text)
    body_digest: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="queued")
    message: Mapped[str | None] = mapped_column(Text, default=None)
    ray_job_id: Mapped[str | None] = mapped_column(String(200), default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    total_trials: Mapped[int] = mapped_column(Integer, default=0)
    search_metric: Mapped[str] = mapped_column(String(100), default=DEFAULT_SEARCH_METRIC)
    search_mode: Mapped[str] = mapped_column(String(3), default="max")
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True)
class Submitted:
    """The outcome of ``SweepStore.add``: the sweep, and whether this call created it."""

    row: SweepRow
    created: bool


class IdempotencyConflictError(Exception):
    """The idempotency key was used before with another body."""

    def __init__(self, key: str, sweep_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was used for sweep {sweep_id} with another body; "
            "use a new key for a new sweep"
        )
        self.sweep_id = sweep_id


def _engine_options(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # the API's poller thread and request handlers share the file
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True}  # a PostgreSQL restart must not break the next request


class SweepStore:
    """Rows of submitted sweeps; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, **_engine_options(url))
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()

    def add(self, row: SweepRow) -> Submitted:
        """Store a new sweep, or with a known idempotency key and the same body, the old one."""
        key = row.idempotency_key
        if key is not None:
            earlier = self.by_key(key)
            if earlier is not None:
                return self._same_body(earlier, row)
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            # Two submits with one key raced; the first one's row is the sweep.
            earlier = self.by_key(key) if key is not None else None
            if earlier is None:
                raise
            return self._same_body(earlier, row)
        return Submitted(row, created=True)

    @staticmethod
    def _same_body(earlier: SweepRow, row: SweepRow) -> Submitted:
        if earlier.body_digest != row.body_digest:
            raise IdempotencyConflictError(row.idempotency_key or "", earlier.sweep_id)
        return Submitted(earlier, created=False)

    def by_key(self, key: str) -> SweepRow | None:
        """The sweep submitted with this idempotency key."""
        with self._sessions() as session:
            return session.scalars(select(SweepRow).where(SweepRow.idempotency_key == key)).first()

    def get(self, sweep_id: str) -> SweepRow | None:
        """One sweep, or None."""
        with self._sessions() as session:
            return session.get(SweepRow, sweep_id)

    def exists(self, sweep_id: str) -> bool:
        """Whether a sweep of this id was submitted."""
        return self.get(sweep_id) is not None

    def all(self, states: frozenset[str] | None = None) -> list[SweepRow]:
        """Every sweep (or those in ``states``), newest first."""
        query = select(SweepRow).order_by(SweepRow.created_at.desc())
        if states is not None:
            query = query.where(SweepRow.state.in_(sorted(str(state) for state in states)))
        with self._sessions() as session:
            return list(session.scalars(query))

    def count(self, states: frozenset[str]) -> int:
        """How many sweeps are in ``states``."""
        query = select(func.count()).select_from(SweepRow)
        query = query.where(SweepRow.state.in_(sorted(str(state) for state in states)))
        with self._sessions() as session:
            return int(session.scalar(query) or 0)

    def page(self, limit: int, after: str | None = None) -> list[SweepRow]:
        """At most ``limit`` sweeps, newest first, from the one after sweep ``after``.

        A cursor of the last id seen (not an offset): sweeps submitted meanwhile do not shift
        the next page. A ``KeyError`` when ``after`` names no sweep.
        """
        order = (SweepRow.created_at.desc(), SweepRow.sweep_id.desc())
        query = select(SweepRow).order_by(*order).limit(limit)
        with self._sessions() as session:
            if after is not None:
                last = session.get(SweepRow, after)
                if last is None:
                    raise KeyError(after)
                query = query.where(
                    or_(
                        SweepRow.created_at < last.created_at,
                        and_(
                            SweepRow.created_at == last.created_at,
                            SweepRow.sweep_id < last.sweep_id,
                        ),
                    )
                )
            return list(session.scalars(query))

    def stops_pending(self) -> list[SweepRow]:
        """Cancelled sweeps whose job may have reached Ray and was not confirmed stopped."""
        pending = SweepRow.summary[STOP_PENDING].as_string().is_not(None)
        query = select(SweepRow).where(SweepRow.state == str(SweepState.CANCELLED), pending)
        with self._sessions() as session:
            return list(session.scalars(query))

    def mark_stop(self, sweep_id: str, job_id: str) -> None:
        """Remember that ``job_id`` must be stopped (``STOP_PENDING``) until ``clear_stop``."""
        with self._sessions.begin() as session:
            row = session.get(SweepRow, sweep_id)
            if row is not None:  # a new dict: SQLAlchemy does not see changes inside one
                row.summary = {**(row.summary or {}), STOP_PENDING: job_id}

    def clear_stop(self, sweep_id: str, job_id: str) -> None:
        """Forget the pending stop of ``job_id`` (stopped, or never on Ray)."""
        with self._sessions.begin() as session:
            row = session.get(SweepRow, sweep_id)
            if row is not None and (row.summary or {}).get(STOP_PENDING) == job_id:
                row.summary = {k: v for k, v in row.summary.items() if k != STOP_PENDING}

    def ping(self) -> None:
        """One round trip to the database (readiness); raises when it cannot be reached."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def update_if(
        self, sweep_id: str, expected_state: str, expected_attempt: int, /, **changes: Any
    ) -> SweepRow | None:
        """Change a sweep only while it is still in ``expected_state`` at ``expected_attempt``.

        None when it is not (and nothing changed).

        One conditional UPDATE, atomic in SQLite and PostgreSQL alike: the service reads a
        sweep, talks to Ray without holding any lock, and then applies what it learnt only if
        no other request (a cancel, the poller) changed the sweep meanwhile.
        """
        values = {
            name: value.value if isinstance(value, TextEnum) else value
            for name, value in changes.items()
        }
        values["updated_at"] = _now()
        statement = (
            sql_update(SweepRow)
            .where(
                SweepRow.sweep_id == sweep_id,
                SweepRow.state == str(expected_state),
                SweepRow.attempt == expected_attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            changed = session.execute(statement).rowcount  # type: ignore[attr-defined]
        return self.get(sweep_id) if changed else None

    def update(self, sweep_id: str, **changes: Any) -> SweepRow:
        """Change fields of one sweep; the row as stored."""
        with self._sessions.begin() as session:
            row = session.get(SweepRow, sweep_id)
            if row is None:
                raise KeyError(sweep_id)
            for name, value in changes.items():
                # The column holds the state's text, whatever the database driver makes of enums.
                setattr(row, name, value.value if isinstance(value, TextEnum) else value)
            row.updated_at = _now()
        return row
