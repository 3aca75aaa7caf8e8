"""The states of trials and sweeps, and the record a trial leaves in its sweep's folder."""

from __future__ import annotations

from enum import Enum
from typing import Any


class TrialState(str, Enum):
    """How a trial ended: its record's ``status``."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PRUNED = "pruned"  # stopped early by ASHA

    def __str__(self) -> str:
        return self.value


class SweepStatus(str, Enum):
    """A sweep's ``status`` in its folder's ``sweep.json``, as its driver last wrote it."""

    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


Record = dict[str, Any]
"""A trial record as stored (``trials/<id>.json``): identity, ``status``, ``hp.<name>`` settings,
the summary metrics or ``error``; one row of the results file."""


def state_counts(records: list[Record]) -> dict[str, int]:
    """Records per ended state, every state present (0 where none)."""
    counts = {state.value: 0 for state in sorted(TrialState, key=lambda s: s.value)}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts
