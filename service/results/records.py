"""The states of trials and sweeps, and the record a trial leaves in its sweep's folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from trainers.validation import TextEnum


class TrialState(TextEnum):
    """How a trial ended: its record's ``status``."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PRUNED = "pruned"  # stopped early by ASHA


class SweepStatus(TextEnum):
    """A sweep's ``status`` in its folder's ``sweep.json``, as its driver last wrote it."""

    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class SweepInfo:
    """A sweep's ``sweep.json``: its identity, how its driver last left it, where its runs are.

    ``tracking`` is the MLflow location (``service.tracking.store.Tracking`` as a mapping) or
    None without tracking; ``counts`` the trials per ended state once the sweep ended;
    ``tracking_problems`` what MLflow could not store at its end (the files are on disk).
    """

    sweep_id: str
    name: str
    status: SweepStatus
    tracking: dict[str, str] | None = None
    git_commit: str = "unknown"
    counts: dict[str, int] | None = None
    tracking_problems: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepInfo:
        """Read back what ``asdict`` of one wrote; keys this version does not know are left."""
        known = {f.name for f in fields(cls)} - {"status"}
        kept = {k: v for k, v in data.items() if k in known}
        return cls(**kept, status=SweepStatus(data["status"]))


Record = dict[str, Any]
"""A trial record as stored (``TrialRecord.to_row``): one row of the results file."""


@dataclass(frozen=True)
class Failure:
    """A failure that a retry would repeat (NaN loss, unreadable data), left by a worker."""

    error: str
    traceback: str


# The record's own keys as stored; every other key is a setting (``hp.<name>``) or a metric.
_IDENTITY = ("trial_id", "name", "cell", "dataset", "backbone", "method", "loss", "seed")
_RUN_INFO = ("recipe", "epochs", "comparable")
# Stored only when known: records written before these were recorded read back the same
# (algorithm None: supervised; labels None: the data's; as_side None: the default side;
# labelled_mixup None: none).
_SETTINGS = ("lambda_mode", "algorithm", "labels", "as_side", "labelled_mixup")
_FAILURE = ("error", "traceback", "deterministic")
HYPERPARAMETER_PREFIX = "hp."


@dataclass(frozen=True)
class TrialRecord:
    """What a trial leaves in its sweep's folder when it ends (``trials/<id>.json``).

    Stored flat, one row of the results file: identity, ``status``, the cell's recipe, epochs,
    whether the paper's number compares and how lambda was drawn (``lambda_mode``: batch or
    sample; None in records from before it was recorded), the training algorithm and the labels
    kept (``algorithm``, ``labels``: Table 7's axes; None in older records), the AS side where
    it is not the default (``as_side``, Table 9's axis) and a transfer cell's labelled mixing
    beside its AS term (``labelled_mixup``, Table 9's "+MCE+AS" rows), ``hp.<name>`` per
    hyperparameter (the cell's, then the search's sampled setting), the metrics of its last
    epoch, and for a failure the error, its traceback and whether a retry would repeat it
    (``deterministic``).
    """

    trial_id: str
    name: str
    cell: str
    dataset: str
    backbone: str
    method: str
    loss: str
    seed: int
    status: TrialState
    recipe: str | None = None
    epochs: int | None = None
    comparable: bool = True
    lambda_mode: str | None = None
    algorithm: str | None = None
    labels: float | None = None
    as_side: str | None = None
    labelled_mixup: str | None = None
    hyperparameters: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    deterministic: bool | None = None

    def metric(self, name: str) -> float | None:
        """The value of metric ``name`` at the trial's last epoch, or None."""
        return self.metrics.get(name)

    def to_row(self) -> Record:
        """The record as stored and as a row of the results file."""
        row: Record = {key: getattr(self, key) for key in _IDENTITY}
        row["status"] = self.status.value
        row |= {key: getattr(self, key) for key in _RUN_INFO}
        row |= {key: getattr(self, key) for key in _SETTINGS if getattr(self, key) is not None}
        row |= {HYPERPARAMETER_PREFIX + k: v for k, v in self.hyperparameters.items()}
        row |= self.metrics
        row |= {key: getattr(self, key) for key in _FAILURE if getattr(self, key) is not None}
        return row

    @classmethod
    def from_row(cls, row: Record) -> TrialRecord:
        """A record from its stored form (``to_row``)."""
        known = {*_IDENTITY, "status", *_RUN_INFO, *_SETTINGS, *_FAILURE}
        return cls(
            **{key: row[key] for key in _IDENTITY},
            status=TrialState(row["status"]),
            **{key: row[key] for key in (*_RUN_INFO, *_SETTINGS, *_FAILURE) if key in row},
            hyperparameters={
                k.removeprefix(HYPERPARAMETER_PREFIX): v
                for k, v in row.items()
                if k.startswith(HYPERPARAMETER_PREFIX)
            },
            metrics=numbers(
                {k: v for k, v in row.items() if k not in known}, HYPERPARAMETER_PREFIX
            ),
        )


def numbers(values: Mapping[str, Any], but_prefix: str | None = None) -> dict[str, float]:
    """The numeric values of ``values`` (no bools), leaving out keys with ``but_prefix``."""
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not (but_prefix and k.startswith(but_prefix))
    }


def state_counts(records: list[TrialRecord]) -> dict[str, int]:
    """Records per ended state, every state present (0 where none)."""
    counts = {state.value: 0 for state in sorted(TrialState, key=lambda s: s.value)}
    for record in records:
        counts[record.status.value] += 1
    return counts
