"""Learning curves of a sweep's cells: mean ± std over seeds of a metric, epoch by epoch.

The per-epoch metrics of a trial are read from its log in the sweep's folder
(``logs/<trial id>.log``), where rank 0 writes one line per epoch
(``service.sweep.worker``)::

    2026-01-01 12:00:00 epoch 3: train_loss 2.1, val_top1 41.5, lr 0.1; top1_best 41.5

The folder is what a report is made from (the sweep's driver may be gone, MLflow unreachable);
the log's values have four significant digits, enough for a curve. An epoch logged twice (a
trial resumed from an earlier checkpoint) keeps its last line.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

History = dict[int, dict[str, float]]
"""epoch -> metric -> value, for one trial."""

CURVE_METRICS = ("val_top1", "val_top1_ema")
"""The metrics drawn as learning curves, where the logs have them."""

_EPOCH_LINE = re.compile(r"\bepoch (\d+): (.*)$")


def epoch_history(log_text: str) -> History:
    """Every epoch line of a trial's log: epoch -> metric -> value (the last line per epoch)."""
    history: History = {}
    for line in log_text.splitlines():
        found = _EPOCH_LINE.search(line)
        if found is None:
            continue
        values: dict[str, float] = {}
        for part in re.split(r"[,;] ", found.group(2)):
            name, _, text = part.strip().rpartition(" ")
            try:
                value = float(text)
            except ValueError:
                continue
            if name and math.isfinite(value):
                values[name] = value
        history[int(found.group(1))] = values
    return history


@dataclass(frozen=True)
class Curve:
    """One cell's ``metric`` per epoch: mean, std (None with one trial) and trials counted."""

    cell: str
    metric: str
    epochs: list[int]
    mean: list[float]
    std: list[float | None]
    n: list[int]


def cell_curve(cell: str, metric: str, histories: Iterable[History]) -> Curve | None:
    """Mean ± std (ddof=1) of ``metric`` per epoch over the trials' histories; None if none has it.

    An epoch counts the trials that logged it (a failed trial's curve ends early).
    """
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for epoch, values in history.items():
            if metric in values:
                by_epoch.setdefault(epoch, []).append(values[metric])
    if not by_epoch:
        return None
    epochs = sorted(by_epoch)
    return Curve(
        cell=cell,
        metric=metric,
        epochs=epochs,
        mean=[statistics.mean(by_epoch[e]) for e in epochs],
        std=[statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else None for e in epochs],
        n=[len(by_epoch[e]) for e in epochs],
    )
