"""A pivot as Markdown, as a self-contained HTML page, and its gains as a PNG bar chart."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from service.results.pivot import Gain, PivotTable, fmt


def _gain_cells(gain: Gain) -> list[str]:
    ours = "—" if gain.ours is None else fmt(gain.ours, signed=True)
    theirs = "—" if gain.paper is None else fmt(gain.paper, signed=True)
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
