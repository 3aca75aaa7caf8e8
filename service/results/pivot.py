"""The paper-style pivot of a sweep's trials, with the paper's numbers and the DM - MCE gains.

The paper reports, for image classification, the median top-1 accuracy of the last 10 epochs,
the mean of three trials (Sec. 4; Table 1 for CIFAR-100 and Tiny-ImageNet). ``pivot`` puts our
trials in the same shape: one row per method, one column per (dataset, backbone, loss), each
cell the mean ± standard deviation over seeds of one metric, with the paper's own number beside
it (from ``search_spaces/paper_results/``) and the DM - MCE gain of each method (DM(CE) minus
MCE, DM(BCE) minus MBCE), the gain Table 1 is about.

Conventions, chosen here:

* the standard deviation is the sample one (ddof=1) over the seeds of a cell; with one seed
  there is none, and the cell says ``n=1`` instead of a ``±``;
* only trials with ``status == "succeeded"`` and a finite metric are averaged; ``failed``
  trials are counted and shown (``2 failed``); other statuses (still running) are ignored;
* a trial without a ``comparable`` key counts as comparable; a cell is comparable when none of
  its trials says ``comparable: False``. A non-comparable cell shows the paper's number marked
  "not comparable" and no delta against it;
* the paper's numbers are those of the recipe our trials name (their ``recipe`` key; each
  paper row has one, see ``search_spaces/paper_results/README.md``): a (dataset, backbone) run
  with ``rsb_a3`` is compared with Table 3, one run with ``imagenet_pytorch`` with Table 2, one
  run with a recipe the paper has no number for (``smoke``) with nothing. Trials without a
  ``recipe`` key (older results files) are compared with any recipe's number; a (dataset,
  backbone) whose trials name several recipes with none. Where two tables give a number for one
  cell and recipe, the lower table's is shown (Table 1 before Table 8);
* columns are the (dataset, backbone, loss) we ran, plus the paper's other losses for those
  (dataset, backbone) and recipe so each MCE / DM pair is whole; rows are the methods we ran
  plus the paper's methods for those columns, the latter marked "not run".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.results.paper import load_paper_results
from trainers.vocabulary import GAIN_PAIRS, LOSSES, METHOD_ORDER, PAPER_METRIC

# Our metric -> the paper's column. ``top1_best`` has none: the paper reports the median of the
# last 10 epochs for classification, the best checkpoint only for semi-supervised learning.
PAPER_COLUMN = {PAPER_METRIC: "top1", "fgsm_error": "fgsm_error"}

Column = tuple[str, str, str]
"""(dataset, backbone, loss): one column of the pivot."""


def fmt(value: float, signed: bool = False) -> str:
    """A figure of the tables: two decimals, with its sign when asked."""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


@dataclass(frozen=True)
class Cell:
    """One (method, column) of the pivot: our trials of it and the paper's number.

    ``std`` is None with fewer than two seeds; ``delta`` (our mean minus the paper's) is None
    when either is missing or the cell is not comparable with the paper's recipe.
    """

    n: int = 0
    mean: float | None = None
    std: float | None = None
    failed: int = 0
    missing_metric: int = 0
    comparable: bool = True
    paper: float | None = None
    paper_table: str | None = None
    delta: float | None = None

    @property
    def run(self) -> bool:
        """Whether any trial of this cell finished (succeeded or failed)."""
        return self.n + self.failed + self.missing_metric > 0

    def ours_text(self) -> str:
        """Our side: ``81.00 ± 1.00 (n=3)``, ``81.00 (n=1)``, ``not run``, plus failures."""
        if not self.run:
            return "not run"
        if self.mean is None:
            text = "no result"
        elif self.std is None:
            text = f"{fmt(self.mean)} (n={self.n})"
        else:
            text = f"{fmt(self.mean)} ± {fmt(self.std)} (n={self.n})"
        if self.failed:
            text += f", {self.failed} failed"
        if self.missing_metric:
            text += f", {self.missing_metric} without the metric"
        return text

    def paper_text(self) -> str:
        """The paper's side: ``paper 79.12, Δ +1.88`` or ``paper 79.12, not comparable``."""
        if self.paper is None:
            return ""
        text = f"paper {fmt(self.paper)}"
        if self.run and not self.comparable:
            text += ", not comparable"
        elif self.delta is not None:
            text += f", Δ {fmt(self.delta, signed=True)}"
        return text

    def text(self) -> str:
        """Both sides in one line, as the markdown and HTML tables show them."""
        paper = self.paper_text()
        return f"{self.ours_text()}; {paper}" if paper else self.ours_text()


@dataclass(frozen=True)
class Gain:
    """DM minus its base loss for one (dataset, backbone, method): ours and the paper's.

    ``ours`` is the difference of the two cells' means (None unless both have one); ``paper``
    the difference of the paper's two numbers; ``comparable`` whether both our cells are.
    """

    dataset: str
    backbone: str
    method: str
    base: str
    dm: str
    ours: float | None
    paper: float | None
    comparable: bool

    @property
    def label(self) -> str:
        """``cifar100 / resnet18_cifar: dm_ce - mce``."""
        return f"{self.dataset} / {self.backbone}: {self.dm} - {self.base}"


@dataclass
class PivotTable:
    """Methods x (dataset, backbone, loss) of one metric, with the paper beside ours."""

    metric: str
    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]
    gains: list[Gain] = field(default_factory=list)

    def cell(self, method: str, column: Column) -> Cell:
        """The cell of ``method`` in ``column`` (an empty, "not run" one when it has none)."""
        return self.cells.get((method, column), Cell())


def _rank(order: Sequence[str], name: str) -> tuple[int, str]:
    return (order.index(name), name) if name in order else (len(order), name)


PaperKey = tuple[str, str, str, str, str | None]
"""(dataset, backbone, method, loss, recipe): one paper number; recipe None for any recipe."""


def _paper_numbers(
    paper: Iterable[Mapping[str, Any]], metric: str
) -> dict[PaperKey, tuple[float, str]]:
    """``PaperKey`` -> (number, table) for ``metric``; the lowest table wins.

    Each number is keyed by its row's recipe and by None (any recipe: for trials that name
    none). Table 1 and Table 8 both give the CIFAR-100 R-18 top-1 with the ``cifar`` recipe;
    Table 1's is the paper's headline result (800 epochs, Table 8's 400), so it is the one shown.
    """
    column = PAPER_COLUMN.get(metric)
    numbers: dict[PaperKey, tuple[float, str]] = {}
    if column is None:
        return numbers

    def table_number(row: Mapping[str, Any]) -> tuple[int, str]:
        table = str(row.get("table", ""))
        return (int(table), table) if table.isdigit() else (10**9, table)

    for row in sorted(paper, key=table_number, reverse=True):
        value = row.get(column)
        if isinstance(value, (int, float)) and math.isfinite(value):
            key = (row["dataset"], row["backbone"], row["method"], row["loss"])
            for recipe in (row.get("recipe"), None):
                paper_key: PaperKey = (*key, recipe)
                numbers[paper_key] = (float(value), str(row.get("table", "")))
    return numbers


def _summarise(trials: list[Mapping[str, Any]], metric: str, paper: tuple[float, str] | None):
    values, failed, missing = [], 0, 0
    for trial in trials:
        if trial.get("status") == "failed":
            failed += 1
        elif trial.get("status") == "succeeded":
            value = trial.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                values.append(float(value))
            else:
                missing += 1
    mean = statistics.mean(values) if values else None
    std = statistics.stdev(values) if len(values) >= 2 else None
    comparable = all(trial.get("comparable", True) is not False for trial in trials)
    number, table = paper if paper else (None, None)
    delta = mean - number if comparable and mean is not None and number is not None else None
    return Cell(len(values), mean, std, failed, missing, comparable, number, table, delta)


def pivot(
    rows: Iterable[Mapping[str, Any]],
    paper: Iterable[Mapping[str, Any]] | None = None,
    metric: str = PAPER_METRIC,
) -> PivotTable:
    """Pivot trial results: methods x (dataset, backbone, loss), mean ± std over seeds.

    ``paper`` is the paper's numbers as ``load_paper_results`` gives them; None loads the
    repository's (pass ``[]`` for none). Cells compare with the paper's median top-1 of the
    last 10 epochs, mean of three trials (Table 1, Sec. 4) for ``top1_median_last10`` and with
    Table 8's FGSM error for ``fgsm_error``; ``top1_best`` has no paper number. See the module
    docstring for the conventions (std, failures, comparability, recipes, "not run").
    """
    rows = list(rows)
    numbers = _paper_numbers(load_paper_results() if paper is None else paper, metric)

    grouped: dict[tuple[str, Column], list[Mapping[str, Any]]] = {}
    recipes: dict[tuple[str, str], set[str | None]] = {}
    for row in rows:
        column = (row["dataset"], row["backbone"], row["loss"])
        grouped.setdefault((row["method"], column), []).append(row)
        recipes.setdefault(column[:2], set()).add(row.get("recipe"))
    # The recipe each (dataset, backbone) ran with: None for rows without one, "(several)" (no
    # paper row's) where its rows name more than one.
    recipe_of = {
        pair: names.pop() if len(names) == 1 else "(several)" for pair, names in recipes.items()
    }

    columns = {column for _, column in grouped}
    methods = {method for method, _ in grouped}
    for dataset, backbone, method, loss, recipe in numbers:
        if (dataset, backbone) in recipe_of and recipe_of[(dataset, backbone)] == recipe:
            columns.add((dataset, backbone, loss))
            methods.add(method)
    ordered_columns = sorted(columns, key=lambda c: (c[0], c[1], _rank(LOSSES, c[2])))
    ordered_methods = sorted(methods, key=lambda m: _rank(METHOD_ORDER, m))

    cells = {}
    for method in ordered_methods:
        for column in ordered_columns:
            number = numbers.get((column[0], column[1], method, column[2], recipe_of[column[:2]]))
            trials = grouped.get((method, column), [])
            if trials or number:
                cells[(method, column)] = _summarise(trials, metric, number)

    table = PivotTable(metric, ordered_methods, ordered_columns, cells)
    table.gains = _gains(table)
    return table


def _gains(table: PivotTable) -> list[Gain]:
    gains = []
    pairs = sorted({(dataset, backbone) for dataset, backbone, _ in table.columns})
    for dataset, backbone in pairs:
        for method in table.methods:
            for base, dm in GAIN_PAIRS:
                a = table.cell(method, (dataset, backbone, base))
                b = table.cell(method, (dataset, backbone, dm))
                ours = b.mean - a.mean if a.mean is not None and b.mean is not None else None
                theirs = b.paper - a.paper if a.paper is not None and b.paper is not None else None
                if ours is not None or (theirs is not None and (a.run or b.run)):
                    comparable = a.comparable and b.comparable
                    gains.append(
                        Gain(dataset, backbone, method, base, dm, ours, theirs, comparable)
                    )
    return gains
