"""The report's charts: the gains (PNG or inline SVG) and learning curves (inline SVG).

Drawn with Matplotlib's object API; the learning curves one panel per (dataset, backbone,
method).

Inline SVG keeps the HTML report one self-contained file. Text stays text (``svg.fonttype``
none) and the drawn parts carry ids (``gid``) a browser test can find: ``gain-base-<k>`` /
``gain-control-<k>`` for the bars, ``gain-errors-...`` for their error bars, ``curve-<cell
slug>`` for a cell's mean curve and ``band-<cell slug>`` for its ± std band.
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.results.curves import Curve
from service.results.pivot import Gain, PivotTable

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_COUNTER = itertools.count()
_SAVING = threading.Lock()


def _figure(width: float, height: float) -> Figure:
    # The object API with the Agg canvas: no pyplot state, no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _svg(figure: Figure) -> str:
    """The figure as an ``<svg>`` element to put in a page (no XML prolog)."""
    import matplotlib

    buffer = io.StringIO()
    # A salt per figure: the ids of several SVGs in one page must not collide. rc_context
    # changes matplotlib's global settings, and reports render on the service's worker threads:
    # one figure at a time (CPU only under the lock).
    with (
        _SAVING,
        matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"s{next(_COUNTER)}"}),
    ):
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _bars(
    axes: Axes,
    xs: list[float],
    values: list[float | None],
    stds: list[float | None],
    width: float,
    kind: str,
    **style: object,
) -> None:
    """Bars of the values that exist, with black error bars where a std exists."""
    kept = [(x, v, s) for x, v, s in zip(xs, values, stds, strict=True) if v is not None]
    if not kept:
        return
    bars = axes.bar([x for x, _, _ in kept], [v for _, v, _ in kept], width, **style)  # type: ignore[arg-type]
    for patch in bars:
        patch.set_gid(f"gain-{kind}-{next(_COUNTER)}")
    with_std = [(x, v, s) for x, v, s in kept if s is not None]
    if with_std:
        errors = axes.errorbar(
            [x for x, _, _ in with_std],
            [v for _, v, _ in with_std],
            yerr=[s for _, _, s in with_std],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
        )
        errors.lines[2][0].set_gid(f"gain-errors-{kind}-{next(_COUNTER)}")


def _gains_figure(table: PivotTable) -> Figure:
    """DM's gains per method: against the baseline (solid) and the control (hatched), ± std."""
    labels = sorted({gain.label for gain in table.gains})
    methods = [m for m in table.methods if any(g.method == m for g in table.gains)]
    figure = _figure(max(6.0, 1.2 * len(methods) * max(1, len(labels))), 4.5)
    axes = figure.add_subplot()
    if not methods:
        axes.text(0.5, 0.5, "no DM / base pair was run", ha="center", va="center")
        axes.set_axis_off()
        figure.tight_layout()
        return figure
    slots = 2 * len(labels)
    width = 0.8 / slots
    colours = [f"C{i % 10}" for i in range(len(labels))]
    for i, label in enumerate(labels):
        by_method: dict[str, Gain] = {g.method: g for g in table.gains if g.label == label}
        gains = [by_method.get(m) for m in methods]
        offset = (2 * i - (slots - 1) / 2) * width
        xs = [j + offset for j in range(len(methods))]
        _bars(
            axes,
            xs,
            [g.ours if g else None for g in gains],
            [g.std if g else None for g in gains],
            width,
            "base",
            color=colours[i],
            label=f"{label} (vs baseline)",
        )
        _bars(
            axes,
            [x + width for x in xs],
            [g.control if g else None for g in gains],
            [g.control_std if g else None for g in gains],
            width,
            "control",
            color=colours[i],
            hatch="//",
            alpha=0.55,
            label=f"{label} (vs control)",
        )
        paper = [(x, g.paper) for x, g in zip(xs, gains, strict=True) if g and g.paper is not None]
        if paper:
            axes.plot(*zip(*paper, strict=True), "k_", markersize=12, markeredgewidth=2)
    axes.plot([], [], "k_", markersize=12, markeredgewidth=2, label="paper (vs its baseline)")
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    axes.set_ylabel(f"DM - base loss, {table.metric} (points)")
    axes.set_title("DM gains, ± std over seeds", fontsize=10)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def gains_chart(table: PivotTable, path: str | Path) -> Path:
    """A PNG bar chart of our DM gains per method (against baseline and control); the path.

    The paper's gain (against its baseline) is drawn as a black marker over the baseline bar;
    error bars are the std of each gain over seeds (``pivot.Gain``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _gains_figure(table).savefig(path, format="png", dpi=100)
    return path


def gains_svg(table: PivotTable) -> str:
    """The gains chart as an inline ``<svg>`` element."""
    return _svg(_gains_figure(table))


def curves_svg(title: str, curves: Sequence[tuple[str, Curve]]) -> str:
    """One panel of learning curves, an inline ``<svg>``: (legend label, curve) pairs.

    Each curve is its mean per epoch with a band of ± std where two trials or more logged the
    epoch; an EMA curve (``val_top1_ema``) is dashed.
    """
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot()
    for label, curve in curves:
        slug = curve.cell.replace("/", "__")
        ema = curve.metric.endswith("_ema")
        (line,) = axes.plot(
            curve.epochs,
            curve.mean,
            linestyle="--" if ema else "-",
            marker="o" if len(curve.epochs) <= 30 else None,
            markersize=3,
            label=label,
        )
        line.set_gid(f"curve-{slug}" + ("-ema" if ema else ""))
        spread = [(e, m, s) for e, m, s in zip(curve.epochs, curve.mean, curve.std, strict=True)]
        banded = [(e, m - s, m + s) for e, m, s in spread if s is not None]
        if banded:
            band = axes.fill_between(
                [e for e, _, _ in banded],
                [low for _, low, _ in banded],
                [high for _, _, high in banded],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
            band.set_gid(f"band-{slug}" + ("-ema" if ema else ""))
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("epoch")
    axes.set_ylabel("top-1 (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return _svg(figure)
