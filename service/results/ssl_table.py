"""A sweep's semi-supervised table (Table 7's shape) beside the paper's numbers; its DM gains.

Table 7 reports, per semi-supervised algorithm and CIFAR label count, the best top-1 (Sec. 4:
"the max top-1 Acc for SSL tasks"), mean ± std over three seeds, trained with
TorchSSL, which evaluates the EMA of the weights: so our number is ``top1_ema_best``
(``trainers.vocabulary.SEMI_SUPERVISED_METRIC``). ``semi_supervised_table`` puts our trials in
that shape: one row per (algorithm, method, loss), one column per (dataset, labels, backbone),
each cell the mean ± std over seeds beside the paper's number ± its std and the delta.

Conventions, those of ``service.results.pivot`` (its ``summarise`` makes every cell, so the
std is the sample one, failures are counted, and ``comparable: False`` drops the delta):

* trial rows whose ``algorithm`` is absent or ``supervised`` are the pivot's, those of a
  transfer algorithm (Tables 6 and 9) ``transfer_table``'s; every other row (the step-based
  algorithms: ``labelled_only`` and Table 7's) is this table's only;
* rows are labelled as Table 7 labels them (``FixMatch+DM``) and come in its order, with the
  labelled-only baseline first and combinations the paper has no row for last;
* columns are the (dataset, labels, backbone) we ran; rows are those we ran plus the paper's
  rows for those columns (marked "not run");
* the paper's numbers are those of the trials' recipe (``ssl`` for Table 7); trials without a
  ``recipe`` meet any recipe's number, a column whose trials name several recipes none;
* control cells (the base loss at the DM cell's alpha, ``/control`` ids) are rows of their own
  right after their base row, without a paper number;
* the DM gains are the two the paper states (Sec. 4.4): MixMatch+DM - MixMatch and
  FixMatch+DM - FixMatch, per column. Ours has the std of one DM trial minus one base trial,
  sqrt(std_dm^2 + std_base^2), when both cells have two seeds or more; the paper's gain is the
  difference of its two numbers, with the same sqrt of its two printed stds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from service.results.paper import load_paper_results
from service.results.pivot import Cell, is_control_row, is_supervised, summarise
from service.spec.cells import labels_text
from trainers.vocabulary import (
    DM_LOSSES,
    LOSSES,
    METHOD_ORDER,
    SEMI_SUPERVISED_METRIC,
    STEP_BASED,
    TRANSFER,
)

ALGORITHM_NAMES = {
    "labelled_only": "labelled only",
    "pseudo_label": "Pseudo-Labeling",
    "mixmatch": "MixMatch",
    "remixmatch": "ReMixMatch",
    "uda": "UDA",
    "fixmatch": "FixMatch",
    "flexmatch": "FlexMatch",
}
"""How Table 7 names each algorithm (our baseline, ``labelled_only``, is not in it)."""

POLICY_NAMES = {
    "mixup": "Mixup",
    "cutmix": "CutMix",
    "saliencymix": "SaliencyMix",
    "fmix": "FMix",
    "resizemix": "ResizeMix",
}
"""The asymmetric strategy's policies as the paper writes them, for rows Table 7 lacks."""


TABLE7_ROWS: dict[tuple[str, str, str], str] = {
    ("labelled_only", "vanilla", "ce"): "labelled only",
    ("pseudo_label", "vanilla", "ce"): "Pseudo-Labeling",
    ("mixmatch", "mixup", "mce"): "MixMatch",
    ("remixmatch", "mixup", "mce"): "ReMixMatch",
    ("mixmatch", "mixup", "dm_ce"): "MixMatch+DM",
    ("uda", "vanilla", "ce"): "UDA",
    ("fixmatch", "vanilla", "ce"): "FixMatch",
    ("flexmatch", "vanilla", "ce"): "FlexMatch",
    ("fixmatch", "mixup", "mce"): "FixMatch+Mixup",
    ("fixmatch", "mixup", "dm_ce"): "FixMatch+DM",
}
"""Table 7's rows in its order, our labelled-only baseline first: (algorithm, method, loss).

MixMatch and ReMixMatch mix with their own Mixup (``mce``); "+DM" is DM(CE) with the asymmetric
strategy, "+Mixup" FixMatch with the strategy's Mixup term and MCE (``SEMI_SUPERVISED_CELLS``).
"""


@dataclass(frozen=True)
class SslRow:
    """One row: an (algorithm, method, loss) combination, or its control cell."""

    algorithm: str
    method: str
    loss: str
    control: bool = False

    @property
    def combination(self) -> tuple[str, str, str]:
        """(algorithm, method, loss)."""
        return (self.algorithm, self.method, self.loss)

    @property
    def label(self) -> str:
        """Table 7's name (``FixMatch+DM``), else one made alike (``FixMatch+DM (CutMix)``)."""
        label = TABLE7_ROWS.get(self.combination) or made_label(*self.combination)
        return f"{label} (control)" if self.control else label

    def order(self) -> tuple[int, ...]:
        """Its place: Table 7's rows in its order, then the others by algorithm, method, loss.

        A control comes right after its base row.
        """
        known = list(TABLE7_ROWS)
        return (
            known.index(self.combination) if self.combination in known else len(known),
            order_index(STEP_BASED, self.algorithm),
            order_index(METHOD_ORDER, self.method),
            order_index(LOSSES, self.loss),
            self.control,
        )


def order_index(order: Sequence[str], name: str) -> int:
    """``name``'s place in ``order``; names not in it after every one that is."""
    return order.index(name) if name in order else len(order)


def made_label(
    algorithm: str, method: str, loss: str, names: Mapping[str, str] = ALGORITHM_NAMES
) -> str:
    """A row's name made as the paper's (``FixMatch+DM (CutMix)``), algorithms as ``names``."""
    name = names.get(algorithm, algorithm)
    if method == "vanilla":
        return name if loss == "ce" else f"{name} ({loss})"
    policy = POLICY_NAMES.get(method, method)
    if loss in DM_LOSSES:
        return f"{name}+DM ({policy})"
    return f"{name}+{policy}" if loss == "mce" else f"{name}+{policy} ({loss})"


DM_GAINS: tuple[tuple[SslRow, SslRow], ...] = (
    (SslRow("mixmatch", "mixup", "mce"), SslRow("mixmatch", "mixup", "dm_ce")),
    (SslRow("fixmatch", "vanilla", "ce"), SslRow("fixmatch", "mixup", "dm_ce")),
)
"""(base, DM): the gains Sec. 4.4 states, "over MixMatch" and "over FixMatch" (plain FixMatch,
not FixMatch+Mixup)."""


@dataclass(frozen=True)
class SslColumn:
    """One column: a data set with the labels kept, and the backbone.

    ``labels`` is the count or fraction as a cell id writes it (``250``, ``0.15``), empty for
    the data's own labels.
    """

    dataset: str
    labels: str
    backbone: str

    @property
    def text(self) -> str:
        """``cifar10 / 250 labels / wrn28_2`` (``cifar10 / wrn28_2`` without labels)."""
        labels = (f"{self.labels} labels",) if self.labels else ()
        return " / ".join((self.dataset, *labels, self.backbone))

    def order(self) -> tuple[str, float, str]:
        """Data set, then labels from few to many, then backbone."""
        return (self.dataset, float(self.labels) if self.labels else math.inf, self.backbone)


@dataclass(frozen=True)
class PaperNumber:
    """One number of the paper's semi-supervised table: its mean and ± over seeds."""

    top1: float
    std: float | None
    table: str


@dataclass(frozen=True)
class SslGain:
    """DM minus its base row in one column: ours (± over seeds) and the paper's (± its stds)."""

    column: SslColumn
    base: SslRow
    dm: SslRow
    ours: float | None
    std: float | None
    paper: float | None
    paper_std: float | None
    comparable: bool

    @property
    def label(self) -> str:
        """``FixMatch+DM - FixMatch``."""
        return f"{self.dm.label} - {self.base.label}"


@dataclass
class SemiSupervisedTable:
    """(algorithm, method, loss) x (dataset, labels, backbone) of one metric, the paper beside."""

    metric: str
    rows: list[SslRow]
    columns: list[SslColumn]
    cells: dict[tuple[SslRow, SslColumn], Cell]
    gains: list[SslGain] = field(default_factory=list)

    def cell(self, row: SslRow, column: SslColumn) -> Cell:
        """The cell of ``row`` in ``column`` (an empty, "not run" one when it has none)."""
        return self.cells.get((row, column), Cell())


def is_transfer(row: Mapping[str, Any]) -> bool:
    """Whether a trial or paper row is of transfer learning (Tables 6 and 9: ``transfer_table``)."""
    return row.get("algorithm") in TRANSFER


def is_semi_supervised(row: Mapping[str, Any]) -> bool:
    """Whether a trial row is this table's (a step-based algorithm but a transfer one)."""
    return not is_supervised(row) and not is_transfer(row)


Rows = list[Mapping[str, Any]]


def split_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[Rows, Rows, Rows]:
    """The rows of supervised training, semi-supervised ones and transfer ones.

    The pivot's, this table's and ``transfer_table``'s.
    """
    supervised: Rows = []
    semi: Rows = []
    transfer: Rows = []
    for row in rows:
        kind = transfer if is_transfer(row) else semi if is_semi_supervised(row) else supervised
        kind.append(row)
    return supervised, semi, transfer


def _column(row: Mapping[str, Any]) -> SslColumn:
    labels = row.get("labels")
    # Rows read back from Parquet may hold 250.0 for 250: the cell id's spelling keys both.
    text = labels_text(float(labels)) if isinstance(labels, (int, float)) else ""
    return SslColumn(str(row["dataset"]), text, str(row["backbone"]))


def _row(row: Mapping[str, Any]) -> SslRow:
    return SslRow(str(row["algorithm"]), str(row["method"]), str(row["loss"]), is_control_row(row))


PaperKey = tuple[SslRow, SslColumn, str | None]
"""(row, column, recipe): one paper number; recipe None for any recipe."""

RowOf = Callable[[Mapping[str, Any]], SslRow]
"""How a table reads a trial's or paper row's row (``SslRow``, or a kind of it)."""


def paper_numbers(
    paper: Iterable[Mapping[str, Any]],
    keep: Callable[[Mapping[str, Any]], bool] = is_semi_supervised,
    row_of: RowOf = _row,
) -> dict[PaperKey, PaperNumber]:
    """The paper's numbers of the rows ``keep`` keeps (Table 7's) by row, column, recipe.

    Each is keyed by its row's recipe and by None (any recipe: for trials that name none);
    where two tables give one, the lower table's wins, as in the pivot.
    """

    def table_number(row: Mapping[str, Any]) -> tuple[int, str]:
        table = str(row.get("table", ""))
        return (int(table), table) if table.isdigit() else (10**9, table)

    numbers: dict[PaperKey, PaperNumber] = {}
    for row in sorted(paper, key=table_number, reverse=True):
        value, std = row.get("top1"), row.get("top1_std")
        if not keep(row) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        number = PaperNumber(
            float(value),
            float(std) if isinstance(std, (int, float)) else None,
            str(row.get("table", "")),
        )
        for recipe in (row.get("recipe"), None):
            numbers[(row_of(row), _column(row), recipe)] = number
    return numbers


def semi_supervised_table(
    rows: Iterable[Mapping[str, Any]],
    paper: Iterable[Mapping[str, Any]] | None = None,
    metric: str = SEMI_SUPERVISED_METRIC,
) -> SemiSupervisedTable:
    """The semi-supervised trials of ``rows`` in Table 7's shape, mean ± std over seeds.

    ``paper`` is the paper's numbers as ``load_paper_results`` gives them; None loads the
    repository's (pass ``[]`` for none). Supervised and transfer rows are left out. See the
    module docstring.
    """
    numbers = paper_numbers(load_paper_results() if paper is None else paper)
    semi = [row for row in rows if is_semi_supervised(row)]
    return build_table(semi, numbers, metric, _row, DM_GAINS)


GainPairs = tuple[tuple[SslRow, SslRow], ...]


def build_table(
    rows: Iterable[Mapping[str, Any]],
    numbers: Mapping[PaperKey, PaperNumber],
    metric: str,
    row_of: RowOf,
    gain_pairs: GainPairs,
) -> SemiSupervisedTable:
    """``rows`` (all of one kind) as rows ``row_of`` x (dataset, labels, backbone) of ``metric``.

    Shared by Table 7's section and the transfer tables' (``transfer_table``): the conventions
    of the module docstring, with the row kind, paper numbers and DM gains of the caller.
    """
    grouped: dict[tuple[SslRow, SslColumn], list[Mapping[str, Any]]] = {}
    recipes: dict[SslColumn, set[str | None]] = {}
    for row in rows:
        column = _column(row)
        grouped.setdefault((row_of(row), column), []).append(row)
        recipes.setdefault(column, set()).add(row.get("recipe"))
    # A column's recipe: None for trials without one (any recipe's number), "(several)" (no
    # paper row's) where its trials name more than one.
    recipe_of = {c: names.pop() if len(names) == 1 else "(several)" for c, names in recipes.items()}

    table_rows = {table_row for table_row, _ in grouped}
    for table_row, column, recipe in numbers:
        if column in recipe_of and recipe_of[column] == recipe:
            table_rows.add(table_row)
    ordered_rows = sorted(table_rows, key=lambda table_row: table_row.order())
    ordered_columns = sorted(recipe_of, key=SslColumn.order)

    cells = {}
    for table_row in ordered_rows:
        for column in ordered_columns:
            number = numbers.get((table_row, column, recipe_of[column]))
            trials = grouped.get((table_row, column), [])
            if trials or number:
                paper_number = (number.top1, number.table) if number else None
                cell = summarise(trials, metric, paper_number)
                cells[(table_row, column)] = replace(cell, paper_std=number.std if number else None)
    table = SemiSupervisedTable(metric, ordered_rows, ordered_columns, cells)
    table.gains = _gains(table, gain_pairs)
    return table


def _spread(a: float | None, b: float | None) -> float | None:
    """The std of a difference of two independent values with stds ``a`` and ``b``."""
    return math.sqrt(a**2 + b**2) if a is not None and b is not None else None


def _gains(table: SemiSupervisedTable, gain_pairs: GainPairs) -> list[SslGain]:
    """Per column, each of ``gain_pairs`` that ran (either side) or that the paper gives there."""
    gains = []
    for column in table.columns:
        for base_row, dm_row in gain_pairs:
            base, dm = table.cell(base_row, column), table.cell(dm_row, column)
            ours = dm.mean - base.mean if dm.mean is not None and base.mean is not None else None
            theirs = (
                dm.paper - base.paper if dm.paper is not None and base.paper is not None else None
            )
            # As the pivot's gains: a pair neither side of which ran is not shown.
            if ours is None and not (theirs is not None and (base.run or dm.run)):
                continue
            gains.append(
                SslGain(
                    column,
                    base_row,
                    dm_row,
                    ours,
                    _spread(dm.std, base.std) if ours is not None else None,
                    theirs,
                    _spread(dm.paper_std, base.paper_std) if theirs is not None else None,
                    base.comparable and dm.comparable,
                )
            )
    return gains
