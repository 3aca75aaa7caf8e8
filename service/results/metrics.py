"""Which metrics a report shows, which one it headlines, and which one meets the paper's number.

A trial's record keeps the metrics of its last epoch (``trainers.loop``): the final top-1
(``val_top1``), the best top-1 and the median top-1 of the last 10 epochs, the mixed-sample top-1
/ top-2 (Fig. 2), the FGSM error (Table 8) when asked for, and, where the recipe keeps an EMA of
the weights (DeiT, Table 10), the EMA model's final and best top-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.results.pivot import FINAL_METRIC
from service.spec.cells import expand
from service.spec.model import SweepSpec
from trainers.recipes import get_recipe
from trainers.vocabulary import (
    PAPER_METRIC,
    SEMI_SUPERVISED_METRIC,
    STEP_BASED,
    TRANSFER,
    TRANSFER_METRIC,
)

METRICS: dict[str, str] = {
    FINAL_METRIC: "final top-1",
    "top1_best": "best top-1",
    PAPER_METRIC: "median top-1, last 10 epochs",
    "mixed_top1": "mixed top-1",
    "mixed_top2": "mixed top-2",
    "fgsm_error": "FGSM error",
    "val_top1_ema": "EMA final top-1",
    "top1_ema_best": "EMA best top-1",
}
"""Every metric a report shows, in its order, with its column label (all in %)."""

MEDIAN_WINDOW = 10
"""``top1_median_last10`` is the median of the last this many epochs' top-1."""

EMA_NOTE = (
    "Where a recipe keeps an EMA of the weights (DeiT), the report compares the raw model with "
    "the paper and shows the EMA model beside it. The paper's text defines its metric on the "
    "trained model and never mentions an EMA; DeiT's reference training reports the raw "
    "model's accuracy and only saves the EMA; OpenMixup has DeiT configurations both with an "
    "EMAHook (which evaluates the EMA weights) and without one, so the configuration behind the "
    "paper's DeiT numbers cannot be told, and the paper's text is followed."
)


@dataclass(frozen=True)
class Headline:
    """The metric of the report's main table and gains, and why that one."""

    metric: str
    reason: str


def headline(rows: Iterable[Mapping[str, Any]]) -> Headline:
    """The paper's metric, or the final top-1 where some trial ran 10 epochs or fewer.

    In a run of at most 10 epochs the median of the last 10 epochs is the median of every
    epoch, the first (near chance) included: it measures how fast a run learns, not where it
    ends.
    """
    short = sorted(
        {
            int(epochs)
            for row in rows
            if isinstance(epochs := row.get("epochs"), int) and epochs <= MEDIAN_WINDOW
        }
    )
    if short:
        runs = ", ".join(map(str, short))
        return Headline(
            FINAL_METRIC,
            f"final top-1 (last epoch): trials of {runs} epochs ran {MEDIAN_WINDOW} epochs or "
            f"fewer, where {PAPER_METRIC} is the median of every epoch, the first included, "
            "so it is shown beside, not headlined; the paper's number (the median top-1 of "
            "the last 10 epochs of a full run) is beside it for reference only",
        )
    return Headline(
        PAPER_METRIC,
        "the paper's metric: the median top-1 of the last 10 epochs (Sec. 4)",
    )


def ranking(spec: SweepSpec) -> tuple[str, str]:
    """The metric and direction ("max", "min") a sweep's best result so far is chosen by.

    The search's own, else the metric the report headlines for the spec's trials (``headline``),
    so that the live progress and the report name the same best trial.
    """
    if spec.search is not None:
        return spec.search.metric, spec.search.mode
    cells = expand(spec)
    if cells and all(cell.algorithm in TRANSFER for cell in cells):
        # The transfer tables' number (Tables 6 and 9: the model's own best top-1).
        return TRANSFER_METRIC, "max"
    if all(cell.algorithm in STEP_BASED for cell in cells):
        # The semi-supervised tables' number (Table 7: the EMA's best top-1).
        return SEMI_SUPERVISED_METRIC, "max"
    epochs = [
        {"epochs": cell.epochs or get_recipe(spec.recipe, cell.recipe_overrides).epochs}
        for cell in cells
        if cell.algorithm not in STEP_BASED
    ]
    return headline(epochs).metric, "max"


def present(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metrics of ``METRICS`` that some row has a number for, in ``METRICS``' order."""
    rows = list(rows)
    return [
        name for name in METRICS if any(isinstance(row.get(name), (int, float)) for row in rows)
    ]
