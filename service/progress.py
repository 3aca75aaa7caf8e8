"""The live line of ``dmsweep run``: trials done / running / failed, the best so far, the ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class SweepProgress:
    """A rich progress bar over a sweep's trials, fed by ``SweepCallback`` events."""

    def __init__(self, console: Console, total: int, metric: str = "val_top1") -> None:
        self.metric = metric
        self.failed = 0
        self.pruned = 0
        self.best: tuple[float, str] | None = None
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("", total=total, status="starting Ray")

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def done_before(self, records: list[dict[str, Any]]) -> None:
        """Trials a resumed sweep had already finished."""
        for record in records:
            self._count(record)
        self.progress.update(self.task, completed=len(records))

    def _count(self, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        if record["status"] == "failed":
            self.failed += 1
        elif record["status"] == "pruned":
            self.pruned += 1
        value = record.get("top1_median_last10", record.get(self.metric))
        better = self.best is None or (isinstance(value, (int, float)) and value > self.best[0])
        if record["status"] == "succeeded" and isinstance(value, (int, float)) and better:
            self.best = (float(value), record["name"])

    def __call__(self, event: dict[str, Any]) -> None:
        """One event of ``SweepCallback``: start, result, complete or error."""
        if event["event"] in ("complete", "error"):
            self._count(event["record"])
            self.progress.advance(self.task)
        parts = [f"{event['running']} running", f"{self.failed} failed"]
        if self.pruned:
            parts.append(f"{self.pruned} pruned")
        if self.best is not None:
            parts.append(f"best {self.best[0]:.2f} ({self.best[1]})")
        if event["event"] == "result" and "epoch" in event["result"]:
            parts.append(f"last: {event['name']} epoch {int(event['result']['epoch'])}")
        self.progress.update(self.task, status=" | ".join(parts))
