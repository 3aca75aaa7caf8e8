"""A report as Markdown (the main table and the gains) and as one self-contained HTML page.

The page is what a researcher shares: the main table beside the paper, both DM gains (against
the paper's baseline, with the paper's gain, and against the control at the DM cell's alpha)
with their chart, the semi-supervised table (Table 7's shape) and its DM gains where the sweep
ran a semi-supervised algorithm, the transfer table (Tables 6 and 9) alike, every metric of
every cell, mean ± std learning curves and each trial with a link to its MLflow run. Nothing
on it is fetched: the charts are inline SVG, the style inline. Every text from the trials is
escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.results.charts import curves_svg, gains_svg
from service.results.curves import Curve
from service.results.links import RunLinks
from service.results.metrics import EMA_NOTE, METRICS, Headline, present
from service.results.pivot import (
    Gain,
    PivotTable,
    fmt,
    is_control_row,
    is_supervised,
    row_order,
    summarise,
)
from service.results.ssl_table import SemiSupervisedTable, SslGain
from trainers.vocabulary import PAPER_METRIC

Panel = tuple[str, str, str]
"""(dataset, backbone, method): one panel of learning curves."""


def _signed(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "—"
    return fmt(value, signed=True) + (f" ± {fmt(std)}" if std is not None else "")


def _alpha(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _gain_cells(gain: Gain) -> list[str]:
    theirs = "—" if gain.paper is None else fmt(gain.paper, signed=True)
    if gain.paper is not None and not gain.comparable:
        theirs += " (not comparable)"
    control = _signed(gain.control, gain.control_std)
    if gain.control_is_base and gain.control is not None:
        control += " (the baseline ran at DM's alpha)"
    base, dm, other = gain.alphas
    alphas = f"{_alpha(base)} / {_alpha(dm)} / {_alpha(other)}"
    return [
        gain.dataset,
        gain.backbone,
        gain.method,
        f"{gain.dm} - {gain.base}",
        _signed(gain.ours, gain.std),
        theirs,
        control,
        alphas,
    ]


_GAIN_HEADER = [
    "dataset",
    "backbone",
    "method",
    "gain",
    "vs baseline (ours)",
    "paper",
    "vs control (ours)",
    "alpha: baseline / DM / control",
]


def _header(table: PivotTable) -> list[str]:
    return ["method", *(" / ".join(column) for column in table.columns)]


def _title(table: PivotTable) -> str:
    return (
        f"{table.metric}: mean ± std (ddof=1) over seeds of succeeded trials; the paper's "
        "numbers are the median top-1 of the last 10 epochs, mean of three trials (Table 1, "
        "Sec. 4; FGSM error: Table 8)"
    )


_GAINS_NOTE = (
    "The paper compares MCE at its tuned alpha with DM at alpha 0.2 (A.3), so a gain against "
    "the baseline mixes the loss and the alpha; the control is the base loss at the DM cell's "
    "alpha (a spec's `controls: true`), and the gain against it is the loss's alone. ± is the "
    "std of one DM trial minus one base trial over seeds: sqrt(std_dm² + std_base²)."
)


def _line(cells: Sequence[str]) -> str:
    """One row of a GitHub-flavoured markdown table."""
    # A "|" inside a cell would end it early.
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def to_markdown(table: PivotTable, headline: Headline | None = None) -> str:
    """The pivot and its DM gains as two GitHub-flavoured markdown tables."""
    header = _header(table)
    out = [f"## {table.metric}", "", _title(table), ""]
    if headline is not None:
        out += [f"Headline: {headline.reason}.", ""]
    out += [_line(header), _line(["---"] * len(header))]
    for method in table.methods:
        out.append(_line([method, *(table.cell(method, c).text() for c in table.columns)]))
    out += ["", "### DM gains", "", _GAINS_NOTE, ""]
    out += [_line(_GAIN_HEADER), _line(["---"] * len(_GAIN_HEADER))]
    out += [_line(_gain_cells(gain)) for gain in table.gains] or ["(no DM / base pair was run)"]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Page:
    """What the HTML page shows besides the pivot: its trials, curves and run links.

    ``semi_supervised`` is the semi-supervised table of a sweep that ran such trials, shown after
    the pivot's gains; ``transfer`` the transfer-learning table (Tables 6 and 9), after that.
    """

    title: str = "dmsweep report"
    headline: Headline | None = None
    rows: Sequence[Mapping[str, Any]] = ()
    curves: Mapping[Panel, Sequence[tuple[str, Curve]]] = field(default_factory=dict)
    links: RunLinks = field(default_factory=RunLinks)
    semi_supervised: SemiSupervisedTable | None = None
    transfer: SemiSupervisedTable | None = None


def _row(cells: Sequence[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _table(table_id: str, header: Sequence[str], rows: Sequence[str]) -> str:
    return f"<table id='{table_id}'>{_row(header, 'th')}{''.join(rows)}</table>"


def _ssl_title(table: SemiSupervisedTable) -> str:
    return (
        f"{table.metric} ({METRICS.get(table.metric, table.metric)}): mean ± std (ddof=1) over "
        "seeds of succeeded trials; the paper's numbers are its best top-1, mean ± std over "
        "three seeds (Table 7; Sec. 4 reports the best top-1 for semi-supervised learning, and "
        "TorchSSL, the paper's codebase, evaluates the EMA of the weights)"
    )


_SSL_GAINS_NOTE = (
    "The gains Sec. 4.4 states: MixMatch+DM over MixMatch and FixMatch+DM over plain FixMatch. "
    "± is the std of one DM trial minus one base trial over seeds: sqrt(std_dm² + std_base²); "
    "the paper's ± is the same from its two printed stds (it prints none for a gain)."
)
_SSL_GAIN_HEADER = ["dataset", "labels", "backbone", "gain", "ours", "paper"]


def _ssl_header(table: SemiSupervisedTable) -> list[str]:
    return ["algorithm", *(column.text for column in table.columns)]


def _ssl_body(table: SemiSupervisedTable) -> list[list[str]]:
    return [
        [row.label, *(table.cell(row, column).text() for column in table.columns)]
        for row in table.rows
    ]


def _ssl_gain_cells(gain: SslGain) -> list[str]:
    theirs = _signed(gain.paper, gain.paper_std)
    if gain.paper is not None and not gain.comparable:
        theirs += " (not comparable)"
    column = gain.column
    return [
        column.dataset,
        column.labels or "—",
        column.backbone,
        gain.label,
        _signed(gain.ours, gain.std),
        theirs,
    ]


@dataclass(frozen=True)
class Section:
    """The words and HTML ids of a section in Table 7's shape (semi-supervised, transfer)."""

    heading: str
    anchor: str
    table_id: str
    title: Callable[[SemiSupervisedTable], str]
    gains_note: str
    gains_source: str


SSL_SECTION = Section(
    "Semi-supervised", "semi-supervised", "ssl", _ssl_title, _SSL_GAINS_NOTE, "Sec. 4.4"
)


def _transfer_title(table: SemiSupervisedTable) -> str:
    return (
        f"{table.metric} ({METRICS.get(table.metric, table.metric)}): mean ± std (ddof=1) over "
        "seeds of succeeded trials; the paper's numbers are its best top-1 (Sec. 4 reports the "
        "best top-1 for semi-supervised settings), mean ± std over three seeds in Table 6 "
        "(ResNet-50), a mean without a ± in Table 9 (ResNet-18, CUB-200). Table 9's rows are "
        "told apart by the AS side and Self-Tuning's labelled mixing (transfer.labelled_mixup)"
    )


TRANSFER_SECTION = Section(
    "Transfer learning",
    "transfer",
    "transfer",
    _transfer_title,
    "The gains Sec. 4.3 states, DM over Fine-Tuning, Co-Tuning, Self-Tuning and "
    "Self-Tuning+Mixup (Table 6), and the one of Sec. 4.5 (Table 9): +DM(CE)+AS(λ≤0.5) over "
    "+MCE. ± is the std of one DM trial minus one base trial over seeds: "
    "sqrt(std_dm² + std_base²); the paper's ± is the same from its two printed stds (none in "
    "Table 9).",
    "Secs. 4.3 and 4.5",
)


def ssl_markdown(table: SemiSupervisedTable, section: Section = SSL_SECTION) -> str:
    """The section's table and its DM gains as two GitHub-flavoured markdown tables."""
    header = _ssl_header(table)
    out = [f"## {section.heading}: {table.metric}", "", section.title(table), ""]
    out += [_line(header), _line(["---"] * len(header))]
    out += [_line(cells) for cells in _ssl_body(table)]
    out += ["", f"### DM gains, {section.heading.lower()}", "", section.gains_note, ""]
    out += [_line(_SSL_GAIN_HEADER), _line(["---"] * len(_SSL_GAIN_HEADER))]
    gains = [_line(_ssl_gain_cells(gain)) for gain in table.gains]
    out += gains or [f"(no DM / base pair of {section.gains_source} was run)"]
    return "\n".join(out) + "\n"


def _ssl_html(table: SemiSupervisedTable, section: Section = SSL_SECTION) -> list[str]:
    """The page's section of ``table``: its table, then its DM gains."""
    body = [_row(_ssl_header(table), "th"), *(_row(cells) for cells in _ssl_body(table))]
    gains = [_row(_ssl_gain_cells(gain)) for gain in table.gains]
    heading, ids = section.heading, section.table_id
    return [
        f"<h2 id='{section.anchor}'>{heading}: {html.escape(table.metric)}</h2>",
        f"<p class='note'>{html.escape(section.title(table))}</p>",
        f"<table id='{ids}-table'>{''.join(body)}</table>",
        f"<h2 id='{ids}-gains'>DM gains, {heading.lower()}</h2>",
        f"<p class='note'>{html.escape(section.gains_note)}</p>",
        _table(f"{ids}-gains-table", _SSL_GAIN_HEADER, gains)
        if gains
        else f"<p>No DM / base pair of {section.gains_source} was run.</p>",
    ]


def cell_name(row: Mapping[str, Any]) -> str:
    """A row's cell id (``cell``), or its four axes joined for rows without one."""
    if row.get("cell"):
        return str(row["cell"])
    return "/".join(str(row.get(axis)) for axis in ("dataset", "backbone", "method", "loss"))


def _metrics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every metric of every cell: mean ± std (n) over its succeeded trials."""
    names = present(rows)
    by_cell: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(rows, key=row_order):
        by_cell.setdefault(cell_name(row), []).append(row)
    body = []
    for cell, trials in by_cell.items():
        summary = summarise(trials, PAPER_METRIC)
        alphas = ", ".join(f"{a:g}" for a in summary.alphas) or "—"
        modes = sorted({str(t["lambda_mode"]) for t in trials if t.get("lambda_mode")})
        cells = [cell, alphas, ", ".join(modes) or "—"]
        cells += [summarise(trials, name).ours_text() for name in names]
        body.append(_row(cells))
    header = ["cell", "alpha", "lambda mode", *(METRICS[name] for name in names)]
    return _table("metrics-table", header, body)


def _trials_table(rows: Sequence[Mapping[str, Any]], links: RunLinks) -> str:
    names = [n for n in ("val_top1", PAPER_METRIC, "top1_best") if n in present(rows)]
    body = []
    for row in sorted(rows, key=lambda r: (row_order(r), cell_name(r), str(r.get("seed")))):
        alpha = row.get("hp.alpha")
        values = [
            fmt(float(v)) if isinstance(v := row.get(name), (int, float)) else "—" for name in names
        ]
        url = links.urls.get(str(row.get("trial_id")))
        name = html.escape(str(row.get("name") or cell_name(row)))
        run = f"<a class='mlflow-run' href='{html.escape(url)}'>run</a>" if url else "—"
        cells = [
            cell_name(row),
            str(row.get("seed")),
            str(row.get("status")),
            "—" if alpha is None else f"{alpha:g}",
            str(row.get("lambda_mode") or "—"),
            *values,
        ]
        body.append(
            "<tr>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + f"<td title='{name}'>{run}</td></tr>"
        )
    header = ["cell", "seed", "status", "alpha", "lambda mode", *(METRICS[n] for n in names)]
    return _table("trials-table", [*header, "MLflow"], body)


def _curves(curves: Mapping[Panel, Sequence[tuple[str, Curve]]]) -> str:
    if not curves:
        return "<p>No learning curves: no trial log has an epoch line.</p>"
    panels = [
        f"<figure class='curve-panel' data-panel='{html.escape(' / '.join(panel))}'>"
        f"{curves_svg(' / '.join(panel), lines)}</figure>"
        for panel, lines in curves.items()
    ]
    return f"<div id='curves'>{''.join(panels)}</div>"


_STYLE = (
    "body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #999;padding:2px 6px;font-size:13px}th{background:#eee}"
    "#curves{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}"
    "figure svg{max-width:100%;height:auto}p.note{font-size:13px;color:#333}"
)


def _pivot_notes(table: PivotTable, page: Page) -> list[str]:
    """The notes above the page's tables, all of them about the pivot."""
    notes = [_title(table)]
    if page.headline is not None:
        notes.append(f"Headline: {page.headline.reason}.")
    # The EMA note is about the supervised recipes (DeiT); the semi-supervised table compares
    # the EMA model and says so itself.
    supervised = [row for row in page.rows if is_supervised(row)]
    if any(name.endswith("_ema") or "_ema_" in name for name in present(supervised)):
        notes.append(EMA_NOTE)
    notes.append(
        "A cell whose trials drew lambda per sample (lambda mode sample) is marked not "
        "comparable: the paper's configurations draw one lambda per batch."
    )
    return notes


def _pivot_html(table: PivotTable) -> list[str]:
    """The page's pivot section: the main table, its DM gains and their chart."""
    body = [_row(_header(table), "th")]
    body += [
        _row([method, *(table.cell(method, c).text() for c in table.columns)])
        for method in table.methods
    ]
    gains = [_row(_gain_cells(gain)) for gain in table.gains]
    return [
        f"<h2 id='headline'>{html.escape(table.metric)}</h2>",
        f"<table id='headline-table'>{''.join(body)}</table>",
        "<h2 id='gains'>DM gains</h2>",
        f"<p class='note'>{html.escape(_GAINS_NOTE)}</p>",
        _table("gains-table", _GAIN_HEADER, gains)
        if gains
        else "<p>No DM / base pair was run.</p>",
        f"<figure id='gains-chart'>{gains_svg(table)}</figure>",
    ]


def to_html(table: PivotTable | None, page: Page | None = None) -> str:
    """The report as one self-contained HTML page; every text escaped.

    ``table`` is None for a sweep without supervised trials: the page then shows the
    semi-supervised table (``page.semi_supervised``) alone.
    """
    page = page or Page()
    rows = list(page.rows)
    notes = _pivot_notes(table, page) if table is not None else []
    ssl, transfer = page.semi_supervised, page.transfer
    title_metric = PAPER_METRIC
    for shown in (transfer, ssl, table):  # the first shown names the page
        title_metric = shown.metric if shown is not None else title_metric
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(page.title)}: {html.escape(title_metric)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(page.title)}</h1>",
        *(f"<p class='note'>{html.escape(n)}</p>" for n in notes),
    ]
    if table is not None:
        parts += _pivot_html(table)
    if ssl is not None:
        parts += _ssl_html(ssl)
    if transfer is not None:
        parts += _ssl_html(transfer, TRANSFER_SECTION)
    if rows:
        parts += [
            "<h2 id='metrics'>Every metric</h2>",
            "<p class='note'>Mean ± std (ddof=1) over the succeeded trials of each cell; "
            "control cells end in /control.</p>",
            _metrics_table(rows),
            "<h2 id='learning-curves'>Learning curves</h2>",
            "<p class='note'>Top-1 per epoch, mean over a cell's trials with a band of ± std "
            "(from the trials' logs); EMA curves dashed.</p>",
            _curves(page.curves),
            "<h2 id='trials'>Trials</h2>",
            f"<p class='note'>{html.escape(page.links.note)}.</p>",
            _trials_table(rows, page.links),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def control_label(row: Mapping[str, Any]) -> str:
    """How a learning curve's legend names a cell: its loss, and ``(control)`` for a control.

    A step-based cell's AS side and labelled mixing, where a record keeps them (not the
    defaults), follow the loss: Table 9's mce rows share a panel and must not share a name.
    """
    label = str(row["loss"])
    if row.get("as_side"):
        label += f" as_{row['as_side']}"
    if row.get("labelled_mixup"):
        label += f" +labelled {row['labelled_mixup']}"
    return f"{label} (control)" if is_control_row(row) else label
