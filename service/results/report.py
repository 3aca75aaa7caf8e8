"""A sweep's report: its results file, the paper-style table (Markdown, HTML) and gains chart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.results.folder import SweepFolder
from service.results.pivot import pivot
from service.results.records import TrialRecord, TrialState
from service.results.render import gains_chart, to_html, to_markdown
from service.results.results_file import write_results
from service.spec.model import SweepSpec


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


def write_sweep_report(
    folder: SweepFolder, spec: SweepSpec, records: list[TrialRecord]
) -> dict[str, Path]:
    """Write the sweep's results and report; their paths.

    ``results.parquet`` holds every trial. The paper-style table summarises every trial, or, with
    a search, each cell's best setting (failed trials still counted).
    """
    table_rows = None
    if spec.search is not None:
        table_rows = [r.to_row() for r in _best_records(spec, records).values()]
        table_rows += [r.to_row() for r in records if r.status == TrialState.FAILED]
    return write_report([r.to_row() for r in records], folder.path, table_rows=table_rows)


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
