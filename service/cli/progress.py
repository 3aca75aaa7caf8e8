"""The live line of ``dmsweep run``: trials done / running / failed, the best so far, the ETA.

Read from the sweep's folder once a second, as the sweep service reads it
(``SweepFolder.progress``): the display needs nothing from Ray, and a resumed sweep shows the
trials it had already finished.
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.results.folder import SweepFolder

POLL_S = 1.0


class SweepProgress:
    """A rich progress bar over a sweep's trials, refreshed from its folder while it runs."""

    def __init__(
        self, console: Console, folder: SweepFolder, total: int, metric: str, mode: str = "max"
    ) -> None:
        self.folder = folder
        self.metric = metric
        self.mode = mode
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="sweep-progress", daemon=True)

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * POLL_S)
        self.refresh()
        self.progress.__exit__(None, None, None)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.refresh()

    def refresh(self) -> None:
        """Read the folder once and redraw; a folder that cannot be read shows why, once."""
        try:
            trials = self.folder.progress(self.metric, self.mode)
        except (OSError, ValueError, KeyError, TypeError) as error:
            # The display must never end the sweep it shows: the next read may succeed.
            self.progress.update(self.task, status=f"progress not readable: {error}")
            return
        parts = [f"{trials.unfinished} running", f"{trials.failed} failed"]
        if trials.pruned:
            parts.append(f"{trials.pruned} pruned")
        if trials.best is not None:
            name, value = trials.best
            parts.append(f"best {value:.2f} ({name})")
        self.progress.update(self.task, completed=trials.done, status=" | ".join(parts))
