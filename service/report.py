"""Reports of a sweep: trial results to Parquet, a pivot beside the paper's numbers, charts.

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

import html
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PAPER_RESULTS = Path(__file__).resolve().parents[1] / "search_spaces" / "paper_results"
"""The folder of the paper's numbers (CSV files, one per table)."""

IDENTITY = ("dataset", "backbone", "method", "loss", "seed", "status")
METRICS = ("top1_median_last10", "top1_best", "fgsm_error")
RUN_INFO = ("recipe", "epochs", "comparable")
COLUMN_ORDER = (*IDENTITY, *METRICS, *RUN_INFO)
"""The first columns of a results file, in order; every other key follows, sorted."""

# (base loss, its decoupled form): the two comparisons of Table 1 (MCE) and Sec. 3 (MBCE).
GAIN_PAIRS = (("mce", "dm_ce"), ("mbce", "dm_bce"))

# Our metric -> the paper's column. ``top1_best`` has none: the paper reports the median of the
# last 10 epochs for classification, the best checkpoint only for semi-supervised learning.
PAPER_METRIC = {"top1_median_last10": "top1", "fgsm_error": "fgsm_error"}

# Table 1's row order, then the methods of dmsweep the paper has no row for.
_METHOD_ORDER = (
    "vanilla",
    "mixup",
    "cutmix",
    "manifoldmix",
    "saliencymix",
    "fmix",
    "puzzlemix",
    "resizemix",
    "automix",
    "samix",
    "mixup_cutmix",
)
# trainers.objectives.LOSSES's order; not imported, so that a report never loads torch.
_LOSS_ORDER = ("ce", "mce", "dm_ce", "mbce", "mbce_two", "dm_bce")
# Parquet key-value metadata naming the columns stored as JSON text (see ``write_results``).
_JSON_COLUMNS_KEY = b"dmsweep.json_columns"

Column = tuple[str, str, str]
"""(dataset, backbone, loss): one column of the pivot."""


# --- results files ------------------------------------------------------------------------------


def _column_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = {key for row in rows for key in row}
    return [k for k in COLUMN_ORDER if k in keys] + sorted(keys - set(COLUMN_ORDER))


def write_results(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write trial results, one row each, to one Parquet file at ``path``; the path.

    Every key of every row becomes a column (a row without it gets null there), identity
    columns first (``COLUMN_ORDER``), then the others sorted. A column whose values Arrow cannot
    hold in one type (a number in one row, text in another) is stored as JSON text and decoded
    again by ``read_results``, so no value is lost or coerced.
    """
    rows = [dict(row) for row in rows]
    names = _column_names(rows)
    arrays, json_columns = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            json_columns.append(name)
            encoded = [None if v is None else json.dumps(v, default=str) for v in values]
            arrays.append(pa.array(encoded, type=pa.string()))
    table = pa.Table.from_arrays(arrays, names=names)
    table = table.replace_schema_metadata({_JSON_COLUMNS_KEY: json.dumps(json_columns)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a file written by ``write_results``, every column a key (null as None)."""
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    json_columns = set(json.loads(metadata.get(_JSON_COLUMNS_KEY, b"[]")))
    rows = table.to_pylist()
    for row in rows:
        for name in json_columns:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows


def _number(text: str) -> float | int | str | None:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_paper_results(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The paper's reported numbers: every row of every CSV in ``folder``, numbers parsed.

    ``folder`` defaults to ``search_spaces/paper_results/`` of the repository (Tables 1-5 and
    8; see its README.md). Each row has ``table, dataset, backbone, method, loss, recipe`` (the
    dmsweep recipe the table's numbers were trained with) and the paper's metrics (``top1``:
    median top-1 of the last 10 epochs, mean of three trials; ``fgsm_error`` for Table 8).
    ``table`` stays text ("1", "8").
    """
    import csv

    rows = []
    for csv_path in sorted(Path(folder or PAPER_RESULTS).glob("*.csv")):
        with csv_path.open(newline="") as handle:
            for raw in csv.DictReader(handle):
                row = {k: _number(v) for k, v in raw.items()}
                row["table"] = str(raw["table"])
                rows.append(row)
    return rows


# --- pivot --------------------------------------------------------------------------------------


def _fmt(value: float, signed: bool = False) -> str:
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
            text = f"{_fmt(self.mean)} (n={self.n})"
        else:
            text = f"{_fmt(self.mean)} ± {_fmt(self.std)} (n={self.n})"
        if self.failed:
            text += f", {self.failed} failed"
        if self.missing_metric:
            text += f", {self.missing_metric} without the metric"
        return text

    def paper_text(self) -> str:
        """The paper's side: ``paper 79.12, Δ +1.88`` or ``paper 79.12, not comparable``."""
        if self.paper is None:
            return ""
        text = f"paper {_fmt(self.paper)}"
        if self.run and not self.comparable:
            text += ", not comparable"
        elif self.delta is not None:
            text += f", Δ {_fmt(self.delta, signed=True)}"
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
    column = PAPER_METRIC.get(metric)
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
                numbers[(*key, recipe)] = (float(value), str(row.get("table", "")))
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
    metric: str = "top1_median_last10",
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
    ordered_columns = sorted(columns, key=lambda c: (c[0], c[1], _rank(_LOSS_ORDER, c[2])))
    ordered_methods = sorted(methods, key=lambda m: _rank(_METHOD_ORDER, m))

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


# --- rendering ----------------------------------------------------------------------------------


def _gain_cells(gain: Gain) -> list[str]:
    ours = "—" if gain.ours is None else _fmt(gain.ours, signed=True)
    theirs = "—" if gain.paper is None else _fmt(gain.paper, signed=True)
    if gain.paper is not None and not gain.comparable:
        theirs += " (not comparable)"
    return [gain.dataset, gain.backbone, gain.method, f"{gain.dm} - {gain.base}", ours, theirs]


_GAIN_HEADER = ["dataset", "backbone", "method", "gain", "ours", "paper"]


def _header(table: PivotTable) -> list[str]:
    return ["method", *(" / ".join(column) for column in table.columns)]


def _title(table: PivotTable) -> str:
    return (
        f"{table.metric}: mean ± std (ddof=1) over seeds of succeeded trials; the paper's "
        "numbers are the median top-1 of the last 10 epochs, mean of three trials (Table 1, "
        "Sec. 4; FGSM error: Table 8)"
    )


def to_markdown(table: PivotTable) -> str:
    """The pivot and its DM - MCE gains as two GitHub-flavoured markdown tables."""

    def line(cells: Sequence[str]) -> str:
        # A "|" inside a cell would end it early.
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = _header(table)
    out = [f"## {table.metric}", "", _title(table), "", line(header)]
    out.append(line(["---"] * len(header)))
    for method in table.methods:
        out.append(line([method, *(table.cell(method, c).text() for c in table.columns)]))
    out += ["", "### DM - MCE gains", "", line(_GAIN_HEADER), line(["---"] * len(_GAIN_HEADER))]
    out += [line(_gain_cells(gain)) for gain in table.gains] or ["(no DM / base pair was run)"]
    return "\n".join(out) + "\n"


def to_html(table: PivotTable) -> str:
    """The pivot and its gains as one self-contained HTML page; every text escaped."""

    def row(cells: Sequence[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    body = [row(_header(table), "th")]
    body += [
        row([method, *(table.cell(method, c).text() for c in table.columns)])
        for method in table.methods
    ]
    gains = [row(_GAIN_HEADER, "th"), *(row(_gain_cells(gain)) for gain in table.gains)]
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #999;padding:2px 6px;font-size:13px}th{background:#eee}"
    )
    metric = html.escape(table.metric)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>dmsweep report: {metric}</title><style>{style}</style></head><body>\n"
        f"<h2>{metric}</h2><p>{html.escape(_title(table))}</p>\n"
        f"<table>{''.join(body)}</table>\n<h3>DM - MCE gains</h3>\n"
        f"<table>{''.join(gains)}</table>\n</body></html>\n"
    )


def gains_chart(table: PivotTable, path: str | Path) -> Path:
    """A PNG bar chart of our DM - MCE gains per method, one bar per column pair; the path.

    The paper's gain for the same pair is drawn as a black marker over the bar.
    """
    # The object API with the Agg canvas: no pyplot state, no display, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = sorted({gain.label for gain in table.gains})
    methods = [m for m in table.methods if any(g.method == m for g in table.gains)]
    figure = Figure(figsize=(max(6.0, 0.9 * len(methods) * max(1, len(labels))), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if not methods:
        axes.text(0.5, 0.5, "no DM / base pair was run", ha="center", va="center")
        axes.set_axis_off()
    else:
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            by_method = {g.method: g for g in table.gains if g.label == label}
            xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(methods))]
            ours = [getattr(by_method.get(m), "ours", None) for m in methods]
            theirs = [getattr(by_method.get(m), "paper", None) for m in methods]
            axes.bar(
                [x for x, v in zip(xs, ours, strict=True) if v is not None],
                [v for v in ours if v is not None],
                width,
                label=label,
            )
            paper_points = [(x, v) for x, v in zip(xs, theirs, strict=True) if v is not None]
            if paper_points:
                px, py = zip(*paper_points, strict=True)
                axes.plot(px, py, "k_", markersize=12, markeredgewidth=2)
        axes.plot([], [], "k_", markersize=12, markeredgewidth=2, label="paper")
        axes.axhline(0, color="grey", linewidth=0.8)
        axes.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        axes.set_ylabel(f"DM - base loss, {table.metric} (points)")
        axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def write_report(
    rows: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    paper: Iterable[Mapping[str, Any]] | None = None,
    table_rows: Iterable[Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write results.parquet, report.md, report.html and gains.png to ``out_dir``; their paths.

    The report pivots ``top1_median_last10``, the paper's metric (median top-1 of the last 10
    epochs, mean of three trials; Table 1, Sec. 4). ``paper`` as in ``pivot``. The Parquet file
    holds every row; the table summarises ``table_rows`` when given (a tuning sweep's best
    setting per cell), else every row.
    """
    rows = list(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pivot(rows if table_rows is None else list(table_rows), paper=paper)
    markdown = out / "report.md"
    markdown.write_text(to_markdown(table), encoding="utf-8")
    page = out / "report.html"
    page.write_text(to_html(table), encoding="utf-8")
    return {
        "results": write_results(rows, out / "results.parquet"),
        "markdown": markdown,
        "html": page,
        "chart": gains_chart(table, out / "gains.png"),
    }
