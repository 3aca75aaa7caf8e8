"""The semi-supervised table (Table 7's shape) in the report, and Table 7's transcription.

Hand-made trial rows with known values: each cell's mean and sample std, the paper's number
with its ± and the delta, a non-comparable cell without one, the two DM gains Sec. 4.4 states
against hand-computed values; a supervised-only report as it was; and ``table7.csv`` against
the paper's extracted text.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import pytest

from service.results.metrics import headline
from service.results.paper import PAPER_RESULTS, load_paper_results
from service.results.pivot import pivot
from service.results.records import TrialRecord, TrialState
from service.results.render import Page, ssl_markdown, to_html, to_markdown
from service.results.report import (
    learning_curves,
    report_tables,
    sweep_report_markdown,
    write_report,
)
from service.results.ssl_table import (
    DM_GAINS,
    SslColumn,
    SslRow,
    semi_supervised_table,
)
from service.spec.model import SweepSpec
from tests.support.real_data import paper_lines
from tests.test_report import hand_built

C10_250 = SslColumn("cifar10", "250", "wrn28_2")
C100_400 = SslColumn("cifar100", "400", "wrn28_8")
FIXMATCH = SslRow("fixmatch", "vanilla", "ce")
FIXMATCH_DM = SslRow("fixmatch", "mixup", "dm_ce")
MIXMATCH = SslRow("mixmatch", "mixup", "mce")
MIXMATCH_DM = SslRow("mixmatch", "mixup", "dm_ce")
LABELLED_ONLY = SslRow("labelled_only", "vanilla", "ce")


def ssl_trial(
    row: SslRow, column: SslColumn, seed: int, top1: float | None, **extra: Any
) -> dict[str, Any]:
    """One semi-supervised trial row as a record stores it (``TrialRecord.to_row``)."""
    record = TrialRecord(
        trial_id=f"{row.algorithm}-{row.method}-{row.loss}-{column.labels}-{seed}",
        name="t",
        cell=f"{column.dataset}@{column.labels}/{column.backbone}/{row.algorithm}/{row.method}/"
        f"{row.loss}",
        dataset=column.dataset,
        backbone=column.backbone,
        method=row.method,
        loss=row.loss,
        seed=seed,
        status=TrialState.SUCCEEDED if top1 is not None else TrialState.FAILED,
        recipe="ssl",
        epochs=4,  # evaluation intervals: must not change the supervised headline
        algorithm=row.algorithm,
        labels=float(column.labels),
        metrics={} if top1 is None else {"top1_ema_best": top1, "top1_best": top1 - 1.0},
    )
    return {**record.to_row(), **extra}


def hand_made() -> list[dict[str, Any]]:
    """FixMatch and FixMatch+DM on CIFAR-100 / 400, MixMatch and MixMatch+DM on CIFAR-10 / 250.

    Means and sample stds: FixMatch 60 ± 2 (58, 60, 62), FixMatch+DM 62 ± 1 (61, 62, 63; a
    failed fourth), MixMatch 86 ± 1 (85, 86, 87), MixMatch+DM 89 ± sqrt(2) (88, 90), the
    labelled-only baseline 40 ± 3 (37, 40, 43).
    """
    return [
        *(ssl_trial(FIXMATCH, C100_400, s, v) for s, v in enumerate((58.0, 60.0, 62.0))),
        *(ssl_trial(FIXMATCH_DM, C100_400, s, v) for s, v in enumerate((61.0, 62.0, 63.0))),
        ssl_trial(FIXMATCH_DM, C100_400, 3, None),
        *(ssl_trial(MIXMATCH, C10_250, s, v) for s, v in enumerate((85.0, 86.0, 87.0))),
        *(ssl_trial(MIXMATCH_DM, C10_250, s, v) for s, v in enumerate((88.0, 90.0))),
        *(ssl_trial(LABELLED_ONLY, C100_400, s, v) for s, v in enumerate((37.0, 40.0, 43.0))),
    ]


# --- cells: ours, the paper's, the delta ---------------------------------------------------------


def test_mean_sample_std_and_the_papers_number_with_its_std() -> None:
    table = semi_supervised_table(hand_made())
    assert table.metric == "top1_ema_best"
    fixmatch = table.cell(FIXMATCH, C100_400)
    assert (fixmatch.n, fixmatch.mean, fixmatch.std) == (3, 60.0, 2.0)
    assert (fixmatch.paper, fixmatch.paper_std, fixmatch.paper_table) == (53.58, 0.82, "7")
    assert fixmatch.delta == pytest.approx(60.0 - 53.58)
    dm = table.cell(FIXMATCH_DM, C100_400)
    assert (dm.n, dm.mean, dm.std, dm.failed) == (3, 62.0, 1.0, 1)
    assert dm.delta == pytest.approx(62.0 - 59.75)
    assert dm.text() == "62.00 ± 1.00 (n=3), 1 failed; paper 59.75 ± 0.95, Δ +2.25"
    mixmatch_dm = table.cell(MIXMATCH_DM, C10_250)
    assert mixmatch_dm.std == pytest.approx(math.sqrt(2.0))
    # The baseline has no paper number: ours alone.
    assert table.cell(LABELLED_ONLY, C100_400).text() == "40.00 ± 3.00 (n=3)"


def test_rows_in_table7s_order_and_the_papers_rows_not_run() -> None:
    table = semi_supervised_table(hand_made())
    assert table.columns == [C10_250, C100_400]
    # Ours and the paper's rows of the columns we ran, labelled only first, then Table 7's order.
    assert [row.label for row in table.rows] == [
        "labelled only",
        "Pseudo-Labeling",
        "MixMatch",
        "ReMixMatch",
        "MixMatch+DM",
        "UDA",
        "FixMatch",
        "FlexMatch",
        "FixMatch+Mixup",
        "FixMatch+DM",
    ]
    assert table.cell(SslRow("uda", "vanilla", "ce"), C10_250).text() == (
        "not run; paper 94.84 ± 0.06"
    )
    assert table.cell(LABELLED_ONLY, C10_250).text() == "not run"
    # A combination Table 7 has no row for is named alike and comes last.
    extra = ssl_trial(SslRow("fixmatch", "cutmix", "dm_ce"), C10_250, 0, 95.0)
    assert semi_supervised_table([extra], paper=[]).rows[-1].label == "FixMatch+DM (CutMix)"


def test_not_comparable_shows_the_paper_without_a_delta() -> None:
    rows = [
        ssl_trial(FIXMATCH, C100_400, s, v, comparable=False)
        for s, v in enumerate((58.0, 60.0, 62.0))
    ]
    rows += [ssl_trial(FIXMATCH_DM, C100_400, s, v) for s, v in enumerate((61.0, 62.0, 63.0))]
    table = semi_supervised_table(rows)
    cell = table.cell(FIXMATCH, C100_400)
    assert not cell.comparable and cell.delta is None and cell.mean == 60.0
    assert cell.text() == "60.00 ± 2.00 (n=3); paper 53.58 ± 0.82, not comparable"
    (gain,) = [g for g in table.gains if g.base == FIXMATCH]
    assert not gain.comparable
    assert "+6.17 ± 1.25 (not comparable)" in ssl_markdown(table)


def test_labels_read_back_as_floats_and_other_recipes() -> None:
    row = {**ssl_trial(FIXMATCH, C100_400, 0, 55.0), "labels": 400.0}
    assert semi_supervised_table([row]).cell(FIXMATCH, C100_400).paper == 53.58
    # A recipe the paper has no number for: no paper number, no paper rows.
    other = semi_supervised_table([{**row, "recipe": "smoke"}])
    assert other.rows == [FIXMATCH] and other.cell(FIXMATCH, C100_400).paper is None
    # Trials without a recipe meet any recipe's number.
    del row["recipe"]
    assert semi_supervised_table([row]).cell(FIXMATCH, C100_400).paper == 53.58


# --- the DM gains of Sec. 4.4 --------------------------------------------------------------------


def test_the_two_dm_gains_against_hand_computed_values() -> None:
    assert DM_GAINS == ((MIXMATCH, MIXMATCH_DM), (FIXMATCH, FIXMATCH_DM))
    gains = {(g.column, g.label): g for g in semi_supervised_table(hand_made()).gains}
    assert set(gains) == {
        (C10_250, "MixMatch+DM - MixMatch"),
        (C100_400, "FixMatch+DM - FixMatch"),
    }
    fixmatch = gains[(C100_400, "FixMatch+DM - FixMatch")]
    assert fixmatch.ours == pytest.approx(2.0)  # 62 - 60
    assert fixmatch.std == pytest.approx(math.sqrt(1.0**2 + 2.0**2))
    assert fixmatch.paper == pytest.approx(59.75 - 53.58)  # 6.17
    assert fixmatch.paper_std == pytest.approx(math.sqrt(0.95**2 + 0.82**2))
    mixmatch = gains[(C10_250, "MixMatch+DM - MixMatch")]
    assert mixmatch.ours == pytest.approx(3.0)  # 89 - 86
    assert mixmatch.std == pytest.approx(math.sqrt(2.0 + 1.0))
    assert mixmatch.paper == pytest.approx(89.16 - 86.37)  # 2.79
    assert mixmatch.paper_std == pytest.approx(math.sqrt(0.71**2 + 0.59**2))
    assert mixmatch.comparable


def test_a_gain_of_one_seed_has_no_std_and_one_side_run_shows_the_papers() -> None:
    rows = [
        ssl_trial(MIXMATCH, C10_250, 0, 86.0),
        *(ssl_trial(MIXMATCH_DM, C10_250, s, v) for s, v in enumerate((88.0, 90.0))),
        ssl_trial(FIXMATCH, C10_250, 0, 95.0),
    ]
    gains = {g.label: g for g in semi_supervised_table(rows).gains}
    assert gains["MixMatch+DM - MixMatch"].ours == pytest.approx(3.0)
    assert gains["MixMatch+DM - MixMatch"].std is None
    # FixMatch+DM did not run: no gain of ours, the paper's beside it (95.23 - 95.14).
    only_paper = gains["FixMatch+DM - FixMatch"]
    assert only_paper.ours is None and only_paper.paper == pytest.approx(0.09)


# --- the report ----------------------------------------------------------------------------------


def test_a_supervised_only_report_is_unchanged(tmp_path: Path) -> None:
    rows = hand_built()
    paths = write_report(rows, tmp_path)
    main = headline(rows)
    table = pivot(rows, metric=main.metric)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown == to_markdown(table, main)
    assert "Semi-supervised" not in markdown
    page = paths["html"].read_text(encoding="utf-8")
    assert "ssl-table" not in page and "headline-table" in page
    # A chart's SVG carries its drawing time and ids of its own: the page is compared without.
    expected = to_html(table, Page(title="dmsweep report", headline=main, rows=rows))
    assert _without_svg(page) == _without_svg(expected)
    assert page.count("<svg") == expected.count("<svg") > 0


def _without_svg(page: str) -> str:
    return re.sub(r"<svg.*?</svg>", "<svg/>", page, flags=re.DOTALL)


def test_a_sweep_of_both_kinds_shows_both_tables(tmp_path: Path) -> None:
    supervised = [row for row in hand_built() if "epochs" not in row]  # full-length runs
    semi = hand_made()
    markdown = write_report([*supervised, *semi], tmp_path)["markdown"].read_text()
    # The supervised part is the supervised-only report's, byte for byte, the other after it.
    alone = report_tables(supervised).markdown()
    assert markdown == alone + "\n" + ssl_markdown(semi_supervised_table(semi))
    assert markdown.startswith("## top1_median_last10\n")  # the SSL rows' 4 "epochs" ignored
    assert "| FixMatch+DM | not run; paper 95.23 ± 0.09 | 62.00 ± 1.00 (n=3), 1 failed; " in (
        markdown
    )
    assert (
        "| cifar100 | 400 | wrn28_8 | FixMatch+DM - FixMatch | +2.00 ± 2.24 | +6.17 ± 1.25 |"
    ) in markdown
    page = (tmp_path / "report.html").read_text()
    assert "id='headline-table'" in page and "id='ssl-table'" in page
    assert "id='ssl-gains-table'" in page and "FixMatch+DM - FixMatch" in page
    # The supervised pivot has none of the semi-supervised rows.
    assert "fixmatch" not in page.split("id='headline-table'")[1].split("</table>")[0]


def test_a_semi_supervised_only_report(tmp_path: Path) -> None:
    paths = write_report(hand_made(), tmp_path)
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("## Semi-supervised: top1_ema_best\n")
    page = paths["html"].read_text()
    assert "id='headline-table'" not in page and "id='ssl-table'" in page
    assert "<title>dmsweep report: top1_ema_best</title>" in page
    assert paths["chart"].is_file()


def test_the_services_markdown_has_both_tables() -> None:
    # What the service renders on request (in memory) is report.md's text.
    spec = SweepSpec.model_validate(
        {
            "name": "both",
            "grid": {
                "dataset": ["cifar100"],
                "backbone": ["resnet18_cifar"],
                "method": ["mixup"],
                "loss": ["mce", "dm_ce"],
            },
        }
    )
    supervised = [
        TrialRecord.from_row({**row, "trial_id": f"s{i}", "name": "s", "cell": "c"})
        for i, row in enumerate(hand_built())
    ]
    semi = [TrialRecord.from_row(row) for row in hand_made()]
    markdown = sweep_report_markdown(spec, [*supervised, *semi])
    rows = [record.to_row() for record in [*supervised, *semi]]
    assert markdown == report_tables(rows).markdown()
    assert "## Semi-supervised: top1_ema_best" in markdown and "| mixup | " in markdown
    assert (
        sweep_report_markdown(spec, supervised) == report_tables(rows[: len(supervised)]).markdown()
    )


def test_learning_curve_panels_keep_labels_and_algorithms_apart() -> None:
    rows = [
        ssl_trial(FIXMATCH_DM, C100_400, 0, 60.0),
        ssl_trial(MIXMATCH_DM, C10_250, 0, 89.0),
    ]
    histories = {str(row["trial_id"]): {1: {"val_top1": 10.0}} for row in rows}
    assert set(learning_curves(rows, histories)) == {
        ("cifar100@400", "wrn28_8", "fixmatch/mixup"),
        ("cifar10@250", "wrn28_2", "mixmatch/mixup"),
    }


def test_the_supervised_pivot_ignores_table7() -> None:
    # A supervised cifar10 / wrn28_2 / vanilla / ce trial with the ssl recipe (or none) must not
    # meet FixMatch's or Pseudo-Labeling's number.
    for recipe in ("ssl", None):
        row = {
            "dataset": "cifar10",
            "backbone": "wrn28_2",
            "method": "vanilla",
            "loss": "ce",
            "seed": 0,
            "status": "succeeded",
            "top1_median_last10": 90.0,
            "recipe": recipe,
        }
        table = pivot([row])
        assert table.cell("vanilla", ("cifar10", "wrn28_2", "ce")).paper is None
        assert table.methods == ["vanilla"]


# --- Table 7's transcription ---------------------------------------------------------------------

TABLE7_LABELS = {
    "Pseudo-Labeling": ("pseudo_label", "vanilla", "ce"),
    "MixMatch": ("mixmatch", "mixup", "mce"),
    "ReMixMatch": ("remixmatch", "mixup", "mce"),
    "MixMatch+DM": ("mixmatch", "mixup", "dm_ce"),
    "UDA": ("uda", "vanilla", "ce"),
    "FixMatch": ("fixmatch", "vanilla", "ce"),
    "FlexMatch": ("flexmatch", "vanilla", "ce"),
    "FixMatch+Mixup": ("fixmatch", "mixup", "mce"),
    "FixMatch+DM": ("fixmatch", "mixup", "dm_ce"),
}
TABLE7_COLUMNS = [
    ("cifar10", "250", "wrn28_2"),
    ("cifar10", "4000", "wrn28_2"),
    ("cifar100", "400", "wrn28_8"),
    ("cifar100", "2500", "wrn28_8"),
    ("cifar100", "10000", "wrn28_8"),
]
CSV_COLUMNS = [
    "table",
    "dataset",
    "labels",
    "backbone",
    "algorithm",
    "method",
    "loss",
    "recipe",
    "top1",
    "top1_std",
]
Key = tuple[str, str, str, str, str, str]


def paper_table7() -> dict[Key, tuple[str, str]]:
    """Table 7's numbers from the extracted text: (mean, std) as printed, per cell."""
    lines = paper_lines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Table 7. "))
    numbers: dict[Key, tuple[str, str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("Table "):
            break
        label, *cells = line.split("\t")
        if label in TABLE7_LABELS:
            _losses, *values = cells  # "CE+Con+DM": the row's losses, not a number
            assert len(values) == len(TABLE7_COLUMNS), (label, values)
            for column, value in zip(TABLE7_COLUMNS, values, strict=True):
                mean, std = value.split("±")
                key: Key = (*column, *TABLE7_LABELS[label])
                numbers[key] = (mean, std)
    return numbers


def csv_table7() -> dict[Key, tuple[str, str]]:
    with (PAPER_RESULTS / "table7.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert {(r["table"], r["recipe"]) for r in rows} == {("7", "ssl")}
    numbers = {
        (r["dataset"], r["labels"], r["backbone"], r["algorithm"], r["method"], r["loss"]): (
            r["top1"],
            r["top1_std"],
        )
        for r in rows
    }
    assert len(numbers) == len(rows), "a cell is transcribed twice"
    return numbers


def test_table7_csv_has_the_papers_45_numbers() -> None:
    transcribed = csv_table7()
    assert len(transcribed) == 45
    assert transcribed == paper_table7()


def test_table7_hand_copied_values() -> None:
    # Spelled out from the paper, so that a parser bug cannot hide a transcription error.
    numbers = {
        (r["dataset"], r["labels"], r["algorithm"], r["method"], r["loss"]): (
            r["top1"],
            r["top1_std"],
        )
        for r in load_paper_results()
        if r["table"] == "7"
    }
    assert numbers[("cifar100", 400, "fixmatch", "mixup", "dm_ce")] == (59.75, 0.95)
    assert numbers[("cifar10", 250, "pseudo_label", "vanilla", "ce")] == (53.51, 2.20)
    assert numbers[("cifar10", 4000, "remixmatch", "mixup", "mce")] == (95.16, 0.01)
    assert numbers[("cifar100", 10000, "mixmatch", "mixup", "dm_ce")] == (74.70, 0.28)
    assert numbers[("cifar100", 2500, "flexmatch", "vanilla", "ce")] == (73.51, 0.20)
