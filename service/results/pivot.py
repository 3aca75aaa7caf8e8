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
* a trial that drew lambda per sample (``lambda_mode: sample``) makes its cell not comparable:
  the paper's configurations draw one lambda per batch (the cell says why);
* columns are the (dataset, backbone, loss) we ran, plus the paper's other losses for those
  (dataset, backbone) and recipe so each MCE / DM pair is whole; rows are the methods we ran
  plus the paper's methods for those columns, the latter marked "not run";
* control cells (the base loss at the DM cell's alpha, ``service.spec.cells``: their trials'
  ``cell`` ends in ``/control``) are kept out of the columns and summarised apart
  (``PivotTable.controls``): the paper's base cell is MCE at its own tuned alpha, DM runs at
  alpha 0.2 (A.3), so a DM gain has two parts, the loss and the alpha. Each ``Gain`` holds
  both: DM minus the baseline (beside the paper's gain) and DM minus the control. Where no
  control was run and the baseline ran at the DM cell's alpha, the baseline is the control;
* a gain's ``std`` is that of the difference of one DM trial and one base trial, from the two
  cells' standard deviations over seeds: sqrt(std_dm^2 + std_base^2) (the cells' seeds are
  independent runs); None unless both cells have two seeds or more;
* the pivot is of supervised training: trial rows and paper rows whose ``algorithm`` is a
  semi-supervised one (Table 7's axis) are left out; ``service.results.ssl_table`` shows them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.results.paper import load_paper_results
from service.spec.cells import SUPERVISED, is_control_id
from trainers.vocabulary import GAIN_PAIRS, LOSSES, METHOD_ORDER, PAPER_METRIC

FINAL_METRIC = "val_top1"
"""The top-1 of the last epoch (a trial's record keeps its last epoch's metrics)."""

# Our metric -> the paper's column. ``top1_best`` has none: the paper reports the median of the
# last 10 epochs for classification, the best checkpoint only for semi-supervised learning. The
# final top-1 stands in for the median in runs too short for one (``headline``), so it is shown
# beside the paper's median too (such runs are not comparable with it anyway).
PAPER_COLUMN = {PAPER_METRIC: "top1", FINAL_METRIC: "top1", "fgsm_error": "fgsm_error"}
SAMPLE_MODE = "sample"
"""``lambda_mode`` of trials that drew lambda per sample: not how the paper's numbers were made."""

Column = tuple[str, str, str]
"""(dataset, backbone, loss): one column of the pivot."""


def fmt(value: float, signed: bool = False) -> str:
    """A figure of the tables: two decimals, with its sign when asked."""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


@dataclass(frozen=True)
class Cell:
    """One (method, column) of the pivot: our trials of it and the paper's number.

    ``std`` is None with fewer than two seeds; ``delta`` (our mean minus the paper's) is None
    when either is missing or the cell is not comparable with the paper's recipe. ``alphas``
    are the trials' ``hp.alpha`` values (sorted, each once); ``sample_mode`` says some trial
    drew lambda per sample, which makes the cell not comparable. ``paper_std`` is the paper's
    ± where it prints one (Table 7's semi-supervised numbers), None elsewhere.
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
    alphas: tuple[float, ...] = ()
    sample_mode: bool = False
    paper_std: float | None = None

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
        """The paper's side: ``paper 79.12, Δ +1.88`` or ``paper 79.12, not comparable``.

        With the paper's ± (``paper_std``): ``paper 95.14 ± 0.05, Δ -0.14``.
        """
        if self.paper is None:
            return ""
        text = f"paper {fmt(self.paper)}"
        if self.paper_std is not None:
            text += f" ± {fmt(self.paper_std)}"
        if self.run and not self.comparable:
            text += ", not comparable"
            if self.sample_mode:
                text += " (lambda drawn per sample)"
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

    ``ours`` is the difference of the DM and baseline cells' means (None unless both have one),
    ``std`` its spread over seeds (module docstring); ``paper`` the difference of the paper's two
    numbers; ``comparable`` whether both our cells are. ``control`` / ``control_std`` are DM
    minus the control cell (the base loss at the DM cell's alpha), None without one;
    ``control_is_base`` says the baseline ran at the DM cell's alpha and stands for the control.
    ``alphas`` are (baseline, DM, control) alphas, None where a cell ran none or several.
    """

    dataset: str
    backbone: str
    method: str
    base: str
    dm: str
    ours: float | None
    paper: float | None
    comparable: bool
    std: float | None = None
    control: float | None = None
    control_std: float | None = None
    control_is_base: bool = False
    alphas: tuple[float | None, float | None, float | None] = (None, None, None)

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
    controls: dict[tuple[str, Column], Cell] = field(default_factory=dict)

    def cell(self, method: str, column: Column) -> Cell:
        """The cell of ``method`` in ``column`` (an empty, "not run" one when it has none)."""
        return self.cells.get((method, column), Cell())


def is_supervised(row: Mapping[str, Any]) -> bool:
    """Whether a trial row or a paper row is of supervised training.

    Its ``algorithm`` is absent (records and tables from before Table 7's axis), empty or
    ``supervised``; any other is a semi-supervised one, for ``service.results.ssl_table``.
    """
    return row.get("algorithm") in (None, "", SUPERVISED)


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
    Semi-supervised rows (Table 7) are left out: their key would need the algorithm and labels,
    and a supervised cell such as cifar10 / wrn28_2 / vanilla / ce must not meet FixMatch's number.
    """
    column = PAPER_COLUMN.get(metric)
    numbers: dict[PaperKey, tuple[float, str]] = {}
    if column is None:
        return numbers

    def table_number(row: Mapping[str, Any]) -> tuple[int, str]:
        table = str(row.get("table", ""))
        return (int(table), table) if table.isdigit() else (10**9, table)

    for row in sorted(paper, key=table_number, reverse=True):
        if not is_supervised(row):
            continue
        value = row.get(column)
        if isinstance(value, (int, float)) and math.isfinite(value):
            key = (row["dataset"], row["backbone"], row["method"], row["loss"])
            for recipe in (row.get("recipe"), None):
                paper_key: PaperKey = (*key, recipe)
                numbers[paper_key] = (float(value), str(row.get("table", "")))
    return numbers


def is_control_row(row: Mapping[str, Any]) -> bool:
    """Whether a trial row belongs to a control cell (its ``cell`` id says so)."""
    return is_control_id(str(row.get("cell") or ""))


def row_order(row: Mapping[str, Any]) -> tuple[str, str, tuple[int, str], tuple[int, str], bool]:
    """A trial's cell's place in a list: data set, backbone, method and loss as tables order them.

    A control comes right after its baseline.
    """
    return (
        str(row.get("dataset")),
        str(row.get("backbone")),
        _rank(METHOD_ORDER, str(row.get("method"))),
        _rank(LOSSES, str(row.get("loss"))),
        is_control_row(row),
    )


def _alphas(trials: list[Mapping[str, Any]]) -> tuple[float, ...]:
    found = {t.get("hp.alpha") for t in trials}
    return tuple(sorted(a for a in found if isinstance(a, (int, float))))


def summarise(
    trials: list[Mapping[str, Any]], metric: str, paper: tuple[float, str] | None = None
) -> Cell:
    """One cell of ``metric`` from its trials' rows, beside the paper's (number, table) if any."""
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
    sample_mode = any(trial.get("lambda_mode") == SAMPLE_MODE for trial in trials)
    # Whether a trial compares is its record's (service.spec.cells.comparable, which a sample
    # lambda mode fails); the mode only names the reason.
    comparable = all(t.get("comparable", True) is not False for t in trials)
    number, table = paper if paper else (None, None)
    delta = mean - number if comparable and mean is not None and number is not None else None
    return Cell(
        len(values),
        mean,
        std,
        failed,
        missing,
        comparable,
        number,
        table,
        delta,
        _alphas(trials),
        sample_mode,
    )


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
    Semi-supervised trial rows are left out (``is_supervised``).
    """
    rows = [row for row in rows if is_supervised(row)]
    numbers = _paper_numbers(load_paper_results() if paper is None else paper, metric)

    grouped: dict[tuple[str, Column], list[Mapping[str, Any]]] = {}
    control_rows: dict[tuple[str, Column], list[Mapping[str, Any]]] = {}
    recipes: dict[tuple[str, str], set[str | None]] = {}
    for row in rows:
        column = (row["dataset"], row["backbone"], row["loss"])
        target = control_rows if is_control_row(row) else grouped
        target.setdefault((row["method"], column), []).append(row)
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
                cells[(method, column)] = summarise(trials, metric, number)

    controls = {key: summarise(trials, metric) for key, trials in control_rows.items()}
    table = PivotTable(metric, ordered_methods, ordered_columns, cells, controls=controls)
    table.gains = _gains(table)
    return table


def _difference(dm: Cell, base: Cell) -> tuple[float | None, float | None]:
    """DM's mean minus the base's, and the std of that difference (module docstring)."""
    if dm.mean is None or base.mean is None:
        return None, None
    std = None
    if dm.std is not None and base.std is not None:
        std = math.sqrt(dm.std**2 + base.std**2)
    return dm.mean - base.mean, std


def _alpha(cell: Cell | None) -> float | None:
    return cell.alphas[0] if cell is not None and len(cell.alphas) == 1 else None


def _gains(table: PivotTable) -> list[Gain]:
    gains = []
    pairs = sorted({(dataset, backbone) for dataset, backbone, _ in table.columns})
    for dataset, backbone in pairs:
        for method in table.methods:
            for base, dm in GAIN_PAIRS:
                a = table.cell(method, (dataset, backbone, base))
                b = table.cell(method, (dataset, backbone, dm))
                ours, std = _difference(b, a)
                theirs = b.paper - a.paper if a.paper is not None and b.paper is not None else None
                control = table.controls.get((method, (dataset, backbone, base)))
                control_is_base = (
                    control is None and _alpha(a) is not None and _alpha(a) == _alpha(b)
                )
                if control_is_base:
                    control = a
                versus, versus_std = _difference(b, control) if control else (None, None)
                shown = theirs is not None and (a.run or b.run)
                if ours is None and versus is None and not shown:
                    continue
                gains.append(
                    Gain(
                        dataset,
                        backbone,
                        method,
                        base,
                        dm,
                        ours,
                        theirs,
                        a.comparable and b.comparable,
                        std=std,
                        control=versus,
                        control_std=versus_std,
                        control_is_base=control_is_base,
                        alphas=(_alpha(a), _alpha(b), _alpha(control)),
                    )
                )
    return gains
