"""A sweep's report: its results file, the paper-style tables (Markdown, HTML) and gains chart.

Supervised trials make the pivot (``pivot``) and its gains chart; semi-supervised ones (a
step-based ``algorithm``) the semi-supervised table (``ssl_table``), shown after it; transfer
ones (Tables 6 and 9) the transfer table (``transfer_table``), last. A sweep with only
supervised trials gets the report it got before those tables existed, byte for byte.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.results.charts import gains_chart
from service.results.curves import CURVE_METRICS, Curve, History, cell_curve, epoch_history
from service.results.folder import SweepFolder
from service.results.links import RunLinks, trial_run_links
from service.results.metrics import Headline, headline
from service.results.pivot import PivotTable, is_supervised, pivot
from service.results.records import TrialRecord, TrialState
from service.results.render import (
    TRANSFER_SECTION,
    Page,
    Panel,
    cell_name,
    control_label,
    ssl_markdown,
    to_html,
    to_markdown,
)
from service.results.results_file import write_results
from service.results.ssl_table import SemiSupervisedTable, semi_supervised_table, split_rows
from service.results.transfer_table import transfer_table
from service.spec.cells import labels_text
from service.spec.model import SweepSpec
from service.storage.paths import AnyPath


@dataclass(frozen=True)
class ReportTables:
    """The tables of a report: the supervised pivot with its headline, the step-based tables.

    ``pivot`` is always built (the gains chart draws it) but ``shows_pivot`` is False for a
    sweep that ran step-based trials only; ``semi_supervised`` and ``transfer`` are None
    without trials of their kind.
    """

    headline: Headline
    pivot: PivotTable
    shows_pivot: bool
    semi_supervised: SemiSupervisedTable | None
    transfer: SemiSupervisedTable | None = None

    def markdown(self) -> str:
        """The tables as ``report.md`` holds them: the pivot's section, then the others'."""
        parts = [to_markdown(self.pivot, self.headline)] if self.shows_pivot else []
        if self.semi_supervised is not None:
            parts.append(ssl_markdown(self.semi_supervised))
        if self.transfer is not None:
            parts.append(ssl_markdown(self.transfer, TRANSFER_SECTION))
        return "\n".join(parts)


def report_tables(
    rows: Iterable[Mapping[str, Any]], paper: Iterable[Mapping[str, Any]] | None = None
) -> ReportTables:
    """The pivot of the supervised rows, the semi-supervised and transfer tables of the others.

    The headline is chosen from the supervised rows alone: a semi-supervised trial's ``epochs``
    are its evaluation intervals, which say nothing of the median of the last 10 epochs.
    """
    supervised, semi, transfer = split_rows(rows)
    paper = None if paper is None else list(paper)  # read by both tables
    main = headline(supervised)
    return ReportTables(
        main,
        pivot(supervised, paper=paper, metric=main.metric),
        # A sweep with no trial at all keeps its (empty) pivot, as before.
        shows_pivot=bool(supervised) or not (semi or transfer),
        semi_supervised=semi_supervised_table(semi, paper=paper) if semi else None,
        transfer=transfer_table(transfer, paper=paper) if transfer else None,
    )


def _panel(row: Mapping[str, Any]) -> Panel:
    """A trial's panel of learning curves: (dataset, backbone, method).

    A semi-supervised trial's data set names its labels and its method its algorithm
    (``cifar10@250``, ``fixmatch/mixup``), so that no panel mixes label counts or algorithms.
    """
    dataset, method = str(row["dataset"]), str(row["method"])
    if is_supervised(row):
        return (dataset, str(row["backbone"]), method)
    labels = row.get("labels")
    if isinstance(labels, (int, float)):
        dataset += "@" + labels_text(float(labels))
    return (dataset, str(row["backbone"]), f"{row['algorithm']}/{method}")


def learning_curves(
    rows: Iterable[Mapping[str, Any]], histories: Mapping[str, History]
) -> dict[Panel, list[tuple[str, Curve]]]:
    """Per (dataset, backbone, method), each cell's curves over its succeeded trials' histories.

    ``histories`` is keyed by trial id (a row's ``trial_id``); rows without one are left out.
    """
    by_cell: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("status") == TrialState.SUCCEEDED.value and row.get("trial_id") in histories:
            by_cell.setdefault(cell_name(row), []).append(row)
    panels: dict[Panel, list[tuple[str, Curve]]] = {}
    for cell, trials in by_cell.items():
        first = trials[0]
        panel = _panel(first)
        for metric in CURVE_METRICS:
            curve = cell_curve(cell, metric, (histories[str(t["trial_id"])] for t in trials))
            if curve is not None:
                label = control_label(first) + (" EMA" if metric.endswith("_ema") else "")
                panels.setdefault(panel, []).append((label, curve))
    return panels


def write_report(
    rows: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    paper: Iterable[Mapping[str, Any]] | None = None,
    table_rows: Iterable[Mapping[str, Any]] | None = None,
    *,
    histories: Mapping[str, History] | None = None,
    links: RunLinks | None = None,
    title: str = "dmsweep report",
) -> dict[str, Path]:
    """Write results.parquet, report.md, report.html and gains.png to ``out_dir``; their paths.

    The report's table and gains are of the headline metric (``metrics.headline``): the paper's
    ``top1_median_last10`` (median top-1 of the last 10 epochs, mean of three trials; Table 1,
    Sec. 4), or the final top-1 where trials ran 10 epochs or fewer. Semi-supervised trials are
    in a table of their own after it (``ssl_table``: Table 7's best EMA top-1), transfer trials
    in another (``transfer_table``: Tables 6 and 9's best top-1). ``paper`` as in
    ``pivot``.
    The Parquet file holds every row; the tables summarise ``table_rows`` when given (a tuning
    sweep's best setting per cell), else every row. The HTML page also shows every metric, the
    learning curves from ``histories`` (trial id -> ``curves.History``) and ``links`` to the
    trials' MLflow runs.
    """
    rows = list(rows)
    shown = rows if table_rows is None else list(table_rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = report_tables(shown, paper)
    markdown = out / "report.md"
    markdown.write_text(tables.markdown(), encoding="utf-8")
    page = Page(
        title=title,
        headline=tables.headline,
        rows=shown,
        curves=learning_curves(shown, histories or {}),
        links=links or RunLinks(),
        semi_supervised=tables.semi_supervised,
        transfer=tables.transfer,
    )
    html_page = out / "report.html"
    html_page.write_text(
        to_html(tables.pivot if tables.shows_pivot else None, page), encoding="utf-8"
    )
    return {
        "results": write_results(rows, out / "results.parquet"),
        "markdown": markdown,
        "html": html_page,
        "chart": gains_chart(tables.pivot, out / "gains.png"),
    }


def trial_histories(folder: SweepFolder, records: Iterable[TrialRecord]) -> dict[str, History]:
    """Each trial's per-epoch metrics, from its log in the sweep's folder (none without a log)."""
    histories = {}
    for record in records:
        log = folder.log_file(record.trial_id)
        if log.is_file():
            histories[record.trial_id] = epoch_history(log.read_text(errors="replace"))
    return histories


def write_sweep_report(
    folder: SweepFolder, spec: SweepSpec, records: list[TrialRecord]
) -> dict[str, AnyPath]:
    """Write the sweep's results and report; their paths.

    ``results.parquet`` holds every trial. The paper-style table summarises every trial, or, with
    a search, each cell's best setting (failed trials still counted). The page's learning curves
    come from the trials' logs, its run links from the sweep's MLflow store when it has one.
    """
    table_rows = None
    if spec.search is not None:
        table_rows = [r.to_row() for r in _best_records(spec, records).values()]
        table_rows += [r.to_row() for r in records if r.status == TrialState.FAILED]
    try:
        tracking = folder.read_state().tracking
    except ValueError:  # no sweep.json: a report of the records alone
        tracking = None

    def write(out: Path) -> dict[str, Path]:
        return write_report(
            [r.to_row() for r in records],
            out,
            table_rows=table_rows,
            histories=trial_histories(folder, records),
            links=trial_run_links(tracking),
            title=f"dmsweep report: {folder.sweep_id}",
        )

    if isinstance(folder.path, Path):
        return {name: path for name, path in write(folder.path).items()}
    # On a bucket: written here, then each file uploaded whole beside the sweep's records.
    bucket = folder.path
    with tempfile.TemporaryDirectory(prefix="dmsweep-report-") as scratch:
        written = write(Path(scratch))
        outputs: dict[str, AnyPath] = {}
        for name, path in written.items():
            outputs[name] = bucket / path.name
            (bucket / path.name).write_bytes(path.read_bytes())
    return outputs


def sweep_report_markdown(spec: SweepSpec, records: list[TrialRecord]) -> str:
    """The sweep's paper-style tables (Markdown) as ``write_sweep_report`` writes them, in memory.

    Nothing is written: the service renders a sweep's report on request while the sweep's own
    driver may be writing ``report.md`` and the other files into the same folder.
    """
    shown = [r.to_row() for r in records]
    if spec.search is not None:  # each cell's best setting, failed trials still counted
        shown = [r.to_row() for r in _best_records(spec, records).values()]
        shown += [r.to_row() for r in records if r.status == TrialState.FAILED]
    return report_tables(shown).markdown()


def _best_records(
    spec: SweepSpec, records: list[TrialRecord]
) -> dict[tuple[str, int], TrialRecord]:
    """Per (cell, seed), the succeeded trial with the best value of the search's metric."""
    assert spec.search is not None
    metric, sign = spec.search.metric, 1 if spec.search.mode == "max" else -1
    best: dict[tuple[str, int], tuple[float, TrialRecord]] = {}
    for record in records:
        value = record.metric(metric)
        if record.status != TrialState.SUCCEEDED or value is None:
            continue
        key = (record.cell, record.seed)
        if key not in best or sign * value > sign * best[key][0]:
            best[key] = (value, record)
    return {key: record for key, (_, record) in best.items()}


@dataclass(frozen=True)
class BestSetting:
    """With a search: one cell's (and seed's) best finished setting by the search's metric."""

    cell: str
    seed: int
    metric: str
    value: float
    setting: dict[str, float]
    trial: str

    def to_dict(self) -> dict[str, Any]:
        """As ``best_settings.yaml`` lists it: ``{cell, seed, <metric>: value, setting, trial}``."""
        return {
            "cell": self.cell,
            "seed": self.seed,
            self.metric: self.value,
            "setting": dict(self.setting),
            "trial": self.trial,
        }


def best_settings(spec: SweepSpec, records: list[TrialRecord]) -> list[BestSetting]:
    """With a search: each cell's best finished setting by the search metric."""
    if spec.search is None:
        return []
    search = spec.search
    return [
        BestSetting(
            cell=cell,
            seed=seed,
            metric=search.metric,
            value=float(record.metrics[search.metric]),
            setting={k: v for k, v in record.hyperparameters.items() if k in search.parameters},
            trial=record.name,
        )
        for (cell, seed), record in _best_records(spec, records).items()
    ]
