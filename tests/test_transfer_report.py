"""The transfer table (Tables 6 and 9) in the report, the two tables' transcription and specs.

Hand-made trial rows with known values: each cell's mean and sample std beside the paper's number
(± its std in Table 6, none in Table 9) and the delta; Table 9's rows told apart from each other
and from Table 6's by the AS side and the labelled mixing; the DM gains against hand-computed
values and the paper's own differences (Sec. 4.3's Cars ranges); ``table6.csv`` and
``table9.csv`` against the paper's extracted text and against values copied by hand; the specs
running exactly the tables' cells.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from service.results.metrics import ranking
from service.results.paper import PAPER_RESULTS, load_paper_results
from service.results.records import TrialRecord, TrialState
from service.results.render import TRANSFER_SECTION, ssl_markdown
from service.results.report import learning_curves, report_tables, write_report
from service.results.ssl_table import SslColumn, semi_supervised_table
from service.results.transfer_table import (
    TABLE6_ROWS,
    TABLE9_ROWS,
    TRANSFER_GAINS,
    TransferRow,
    as_side,
    transfer_row,
    transfer_table,
)
from service.spec.cells import expand
from service.spec.reading import load_spec
from tests.support.real_data import paper_lines
from tests.test_ssl_report import hand_made

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"
CUB15_R50 = SslColumn("cub200", "0.15", "resnet50")
CARS15_R50 = SslColumn("cars", "0.15", "resnet50")
CUB15_R18 = SslColumn("cub200", "0.15", "resnet18")

FINE_TUNING = TransferRow("fine_tuning", "vanilla", "ce")
FINE_TUNING_DM = TransferRow("fine_tuning", "mixup", "dm_ce")
SELF_TUNING = TransferRow("self_tuning", "vanilla", "ce")
SELF_TUNING_MIXUP = TransferRow("self_tuning", "mixup", "mce")
SELF_TUNING_DM = TransferRow("self_tuning", "mixup", "dm_ce")
# Table 9's rows past Self-Tuning.
MCE = TransferRow("self_tuning", "mixup", "mce", as_side="none")
MCE_AS_MAJOR = TransferRow(
    "self_tuning", "mixup", "mce", as_side="labelled_major", labelled_mixup="mce"
)
MCE_AS_MINOR = TransferRow("self_tuning", "mixup", "mce", labelled_mixup="mce")
DM_AS_MINOR = TransferRow("self_tuning", "mixup", "dm_ce", labelled_mixup="mce")


def tl_trial(
    row: TransferRow, column: SslColumn, seed: int, top1: float | None, **extra: Any
) -> dict[str, Any]:
    """One transfer trial row as a record stores it (``TrialRecord.to_row``).

    As the sweep stores it: ``as_side`` and ``labelled_mixup`` only where not the default, the
    cell id with ``/as_<side>`` where not the default.
    """
    side = () if row.as_side == "labelled_minor" else (f"as_{row.as_side}",)
    cell = "/".join((f"{column.dataset}@{column.labels}", column.backbone, *row.combination, *side))
    record = TrialRecord(
        trial_id=f"{cell}-{row.labelled_mixup}-{seed}",
        name="t",
        cell=cell,
        dataset=column.dataset,
        backbone=column.backbone,
        method=row.method,
        loss=row.loss,
        seed=seed,
        status=TrialState.SUCCEEDED if top1 is not None else TrialState.FAILED,
        recipe="transfer",
        epochs=9,  # evaluation intervals
        algorithm=row.algorithm,
        labels=float(column.labels),
        as_side=None if row.as_side == "labelled_minor" else row.as_side,
        labelled_mixup=None if row.labelled_mixup == "none" else row.labelled_mixup,
        # top1_best is the transfer tables' number; the EMA's must not be read.
        metrics={} if top1 is None else {"top1_best": top1, "top1_ema_best": top1 - 5.0},
    )
    return {**record.to_row(), **extra}


def hand_made_tl() -> list[dict[str, Any]]:
    """Table 6 on CUB-200 / 15% and Table 9 on CUB-200 / 15% / ResNet-18.

    Means and sample stds: Fine-Tuning 45 ± 1 (44, 45, 46), Fine-Tuning+DM 50 ± 2 (48, 50, 52;
    a failed fourth), Self-Tuning (R-50) 64 ± 3 (61, 64, 67); Table 9: Self-Tuning 58 ± 1 (57,
    58, 59), +MCE 63 ± 2 (61, 63, 65), +MCE+AS(>=0.5) 59 (one seed), +MCE+AS(<=0.5) 62.5 ±
    sqrt(0.5) (62, 63), +DM(CE)+AS(<=0.5) 66 ± 1 (65, 66, 67).
    """
    return [
        *(tl_trial(FINE_TUNING, CUB15_R50, s, v) for s, v in enumerate((44.0, 45.0, 46.0))),
        *(tl_trial(FINE_TUNING_DM, CUB15_R50, s, v) for s, v in enumerate((48.0, 50.0, 52.0))),
        tl_trial(FINE_TUNING_DM, CUB15_R50, 3, None),
        *(tl_trial(SELF_TUNING, CUB15_R50, s, v) for s, v in enumerate((61.0, 64.0, 67.0))),
        *(tl_trial(SELF_TUNING, CUB15_R18, s, v) for s, v in enumerate((57.0, 58.0, 59.0))),
        *(tl_trial(MCE, CUB15_R18, s, v) for s, v in enumerate((61.0, 63.0, 65.0))),
        tl_trial(MCE_AS_MAJOR, CUB15_R18, 0, 59.0),
        *(tl_trial(MCE_AS_MINOR, CUB15_R18, s, v) for s, v in enumerate((62.0, 63.0))),
        *(tl_trial(DM_AS_MINOR, CUB15_R18, s, v) for s, v in enumerate((65.0, 66.0, 67.0))),
    ]


# --- cells: ours, the paper's, the delta ---------------------------------------------------------


def test_mean_sample_std_and_the_papers_number_with_its_std() -> None:
    table = transfer_table(hand_made_tl())
    assert table.metric == "top1_best"
    fine = table.cell(FINE_TUNING, CUB15_R50)
    assert (fine.n, fine.mean, fine.std) == (3, 45.0, 1.0)
    assert (fine.paper, fine.paper_std, fine.paper_table) == (45.25, 0.12, "6")
    assert fine.delta == pytest.approx(45.0 - 45.25)
    dm = table.cell(FINE_TUNING_DM, CUB15_R50)
    assert (dm.n, dm.failed, dm.mean, dm.std) == (3, 1, 50.0, 2.0)
    assert dm.text() == "50.00 ± 2.00 (n=3), 1 failed; paper 50.04 ± 0.17, Δ -0.04"
    self_tuning = table.cell(SELF_TUNING, CUB15_R50)
    assert (self_tuning.mean, self_tuning.std, self_tuning.paper) == (64.0, 3.0, 64.17)


def test_table9_cells_have_no_papers_std() -> None:
    table = transfer_table(hand_made_tl())
    mce = table.cell(MCE, CUB15_R18)
    assert (mce.mean, mce.std, mce.paper, mce.paper_std, mce.paper_table) == (
        63.0,
        2.0,
        63.36,
        None,
        "9",
    )
    assert mce.text() == "63.00 ± 2.00 (n=3); paper 63.36, Δ -0.36"
    major = table.cell(MCE_AS_MAJOR, CUB15_R18)
    assert (major.n, major.mean, major.std, major.paper) == (1, 59.0, None, 59.04)
    minor = table.cell(MCE_AS_MINOR, CUB15_R18)
    assert minor.mean == 62.5 and minor.std == pytest.approx(math.sqrt(0.5))
    assert minor.paper == 62.97
    assert table.cell(DM_AS_MINOR, CUB15_R18).paper == 66.17
    # Self-Tuning is in both tables: its column (backbone) says which number it meets.
    assert table.cell(SELF_TUNING, CUB15_R18).paper == 57.82
    assert table.cell(SELF_TUNING, CUB15_R50).paper == 64.17


# --- rows: order and Table 9's told apart --------------------------------------------------------


def test_rows_come_in_the_tables_order_with_their_labels() -> None:
    # The paper's rows of the columns run, "not run" where no trial ran.
    table = transfer_table(hand_made_tl())
    assert [row.label for row in table.rows] == [
        *TABLE6_ROWS.values(),
        "Self-Tuning +MCE",
        "Self-Tuning +MCE+AS(λ≥0.5)",
        "Self-Tuning +MCE+AS(λ≤0.5)",
        "Self-Tuning +DM(CE)+AS(λ≤0.5)",
    ]
    assert next(iter(TABLE9_ROWS.values())) == "Self-Tuning"
    assert table.columns == [CUB15_R18, CUB15_R50]
    assert table.cell(MCE, CUB15_R50).text() == "not run"  # Table 6 has no +MCE
    assert table.cell(TransferRow("bss", "vanilla", "ce"), CUB15_R50).text() == (
        "not run; paper 47.74 ± 0.23"
    )
    # Table 9's Self-Tuning row is Table 6's: one row, not two.
    assert [row.label for row in table.rows].count("Self-Tuning") == 1


def test_table9_rows_are_told_apart_by_side_and_labelled_mixing() -> None:
    rows = hand_made_tl()
    keys = {transfer_row(row).key for row in rows}
    assert ("self_tuning", "mixup", "mce", "labelled_minor", "mce") in keys
    assert ("self_tuning", "mixup", "mce", "labelled_major", "mce") in keys
    assert ("self_tuning", "mixup", "mce", "none", "none") in keys
    # Table 6's Self-Tuning+Mixup differs from +MCE+AS(λ≤0.5) by the labelled mixing alone.
    assert SELF_TUNING_MIXUP.key == ("self_tuning", "mixup", "mce", "labelled_minor", "none")
    assert SELF_TUNING_MIXUP != MCE_AS_MINOR
    assert (SELF_TUNING_MIXUP.label, MCE_AS_MINOR.label) == (
        "Self-Tuning+Mixup",
        "Self-Tuning +MCE+AS(λ≤0.5)",
    )
    # A Table 6 setting run on Table 9's backbone keeps its Table 6 label and meets no number.
    table = transfer_table([tl_trial(SELF_TUNING_MIXUP, CUB15_R18, 0, 60.0)])
    cell = table.cell(SELF_TUNING_MIXUP, CUB15_R18)
    assert cell.mean == 60.0 and cell.paper is None
    # The side from the cell id where a row has no as_side key (the id's /as_<side> part).
    assert as_side({"cell": "cub200@0.15/resnet18/self_tuning/mixup/mce/as_none"}) == "none"
    assert as_side({"cell": "cub200@0.15/resnet18/self_tuning/mixup/mce"}) == "labelled_minor"
    assert as_side({"as_side": "labelled_major", "cell": "x"}) == "labelled_major"
    # Records read back keep both (TrialRecord.from_row).
    back = TrialRecord.from_row(tl_trial(MCE_AS_MAJOR, CUB15_R18, 0, 59.0)).to_row()
    assert transfer_row(back) == MCE_AS_MAJOR


def test_learning_curves_keep_table9_rows_apart() -> None:
    rows = [tl_trial(row, CUB15_R18, 0, 60.0) for row in (MCE, MCE_AS_MAJOR, MCE_AS_MINOR)]
    histories = {str(row["trial_id"]): {1: {"val_top1": 10.0}} for row in rows}
    (panel,) = learning_curves(rows, histories).values()
    assert sorted(label for label, _ in panel) == [
        "mce +labelled mce",
        "mce as_labelled_major +labelled mce",
        "mce as_none",
    ]


def test_a_row_of_no_table_gets_a_made_label() -> None:
    row = TransferRow("bss", "cutmix", "dm_ce", as_side="labelled_major")
    assert row.label == "BSS+DM (CutMix) [as_side labelled_major]"
    table = transfer_table([tl_trial(row, CUB15_R50, 0, 50.0)], paper=[])
    assert table.rows == [row]


# --- the DM gains --------------------------------------------------------------------------------


def test_the_dm_gains_against_hand_computed_values() -> None:
    assert [(b.label, d.label) for b, d in TRANSFER_GAINS] == [
        ("Fine-Tuning", "Fine-Tuning+DM"),
        ("Co-Tuning", "Co-Tuning+DM"),
        ("Self-Tuning", "Self-Tuning+DM"),
        ("Self-Tuning+Mixup", "Self-Tuning+DM"),
        ("Self-Tuning +MCE", "Self-Tuning +DM(CE)+AS(λ≤0.5)"),
    ]
    gains = {(g.column, g.label): g for g in transfer_table(hand_made_tl()).gains}
    fine = gains[(CUB15_R50, "Fine-Tuning+DM - Fine-Tuning")]
    assert fine.ours == pytest.approx(5.0)  # 50 - 45
    assert fine.std == pytest.approx(math.sqrt(2.0**2 + 1.0**2))
    assert fine.paper == pytest.approx(50.04 - 45.25)  # 4.79
    assert fine.paper_std == pytest.approx(math.sqrt(0.17**2 + 0.12**2))
    table9 = gains[(CUB15_R18, "Self-Tuning +DM(CE)+AS(λ≤0.5) - Self-Tuning +MCE")]
    assert table9.ours == pytest.approx(3.0)  # 66 - 63
    assert table9.paper == pytest.approx(66.17 - 63.36)  # 2.81
    assert table9.paper_std is None  # Table 9 prints no ±
    # Self-Tuning+DM did not run on R-50: no gain of ours, the paper's beside it.
    only_paper = gains[(CUB15_R50, "Self-Tuning+DM - Self-Tuning")]
    assert only_paper.ours is None and only_paper.paper == pytest.approx(73.06 - 64.17)


def test_the_papers_gains_on_cars() -> None:
    # Sec. 4.3: "+4.62%~9.19% for 15% labels, +2.02%~5.67% for 30% labels, and +2.09%~3.15% for
    # 50% labels on Cars"; the table's differences are 4.53~9.19, 2.02~5.64, 2.09~3.15 (README).
    numbers = {
        (r["labels"], r["algorithm"], r["method"], r["loss"]): r["top1"]
        for r in load_paper_results()
        if r["table"] == "6" and r["dataset"] == "cars"
    }
    for labels, low, high in ((0.15, 4.53, 9.19), (0.3, 2.02, 5.64), (0.5, 2.09, 3.15)):
        gains = [
            numbers[(labels, algorithm, "mixup", "dm_ce")]
            - numbers[(labels, algorithm, "vanilla", "ce")]
            for algorithm in ("fine_tuning", "co_tuning", "self_tuning")
        ]
        assert min(gains) == pytest.approx(low) and max(gains) == pytest.approx(high)


# --- the report ----------------------------------------------------------------------------------


def test_the_report_has_the_transfer_section_after_the_others(tmp_path: Path) -> None:
    semi, transfer = hand_made(), hand_made_tl()
    markdown = write_report([*semi, *transfer], tmp_path)["markdown"].read_text()
    ssl_alone = report_tables(semi).markdown()
    # Table 7's section as it was, byte for byte; the transfer section after it.
    assert markdown == ssl_alone + "\n" + ssl_markdown(transfer_table(transfer), TRANSFER_SECTION)
    assert "## Transfer learning: top1_best" in markdown
    assert "| Fine-Tuning+DM | not run | 50.00 ± 2.00 (n=3), 1 failed; " in markdown
    assert "| cub200 | 0.15 | resnet50 | Fine-Tuning+DM - Fine-Tuning | +5.00 ± 2.24 |" in (
        markdown
    )
    page = (tmp_path / "report.html").read_text()
    assert "id='ssl-table'" in page and "id='transfer-table'" in page
    assert "id='transfer-gains-table'" in page
    # The semi-supervised table has none of the transfer rows.
    assert semi_supervised_table([*semi, *transfer]) == semi_supervised_table(semi)


def test_a_transfer_only_report(tmp_path: Path) -> None:
    paths = write_report(hand_made_tl(), tmp_path)
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("## Transfer learning: top1_best\n")
    page = paths["html"].read_text()
    assert "id='headline-table'" not in page and "id='ssl-table'" not in page
    assert "<title>dmsweep report: top1_best</title>" in page


def test_transfer_sweeps_rank_by_the_best_top1() -> None:
    assert ranking(load_spec(SPECS / "tl_table6.yaml")) == ("top1_best", "max")
    assert ranking(load_spec(SPECS / "tl_table9.yaml")) == ("top1_best", "max")
    assert ranking(load_spec(SPECS / "ssl_table7.yaml")) == ("top1_ema_best", "max")


# --- the transcriptions --------------------------------------------------------------------------

TABLE6_LABELS = {
    "Fine-Tuning": ("fine_tuning", "vanilla", "ce"),
    "Fine-Tuning+DM": ("fine_tuning", "mixup", "dm_ce"),
    "BSS": ("bss", "vanilla", "ce"),
    "Co-Tuning": ("co_tuning", "vanilla", "ce"),
    "Co-Tuning+DM": ("co_tuning", "mixup", "dm_ce"),
    "Self-Tuning": ("self_tuning", "vanilla", "ce"),
    "Self-Tuning+Mixup": ("self_tuning", "mixup", "mce"),
    "Self-Tuning+DM": ("self_tuning", "mixup", "dm_ce"),
}
TABLE9_LABELS = {
    "Self-Tuning": ("self_tuning", "vanilla", "ce", "labelled_minor", "none"),
    "+MCE": ("self_tuning", "mixup", "mce", "none", "none"),
    "+MCE+AS($\\lambda \\geq 0.5$)": ("self_tuning", "mixup", "mce", "labelled_major", "mce"),
    "+MCE+AS($\\lambda \\leq 0.5$)": ("self_tuning", "mixup", "mce", "labelled_minor", "mce"),
    "+DM(CE)+AS($\\lambda \\leq 0.5$)": ("self_tuning", "mixup", "dm_ce", "labelled_minor", "mce"),
}
LABELS = ("0.15", "0.3", "0.5")


def _table_lines(caption: str) -> list[str]:
    lines = paper_lines()
    start = next(i for i, line in enumerate(lines) if line.startswith(caption))
    block = []
    for line in lines[start + 1 :]:
        if line.startswith(("Table ", "4.3 ", "works,")):
            break
        block.append(line)
    return block


def paper_table6() -> dict[tuple[str, ...], tuple[str, str]]:
    """Table 6's numbers from the extracted text: (mean, std) as printed, per cell."""
    columns = [(d, labels) for d in ("cub200", "aircraft", "cars") for labels in LABELS]
    numbers: dict[tuple[str, ...], tuple[str, str]] = {}
    for line in _table_lines("Table 6. "):
        label, *cells = line.split("\t")
        if label in TABLE6_LABELS:
            assert len(cells) == len(columns), (label, cells)
            for (dataset, labels), value in zip(columns, cells, strict=True):
                mean, std = value.split("±")
                numbers[(dataset, labels) + TABLE6_LABELS[label]] = (mean, std)
    return numbers


def paper_table9() -> dict[tuple[str, ...], str]:
    """Table 9's numbers from the extracted text, as printed."""
    numbers: dict[tuple[str, ...], str] = {}
    for line in _table_lines("Table 9. "):
        label, *cells = line.split("\t")
        if label in TABLE9_LABELS:
            assert len(cells) == len(LABELS), (label, cells)
            for labels, value in zip(LABELS, cells, strict=True):
                numbers[(labels,) + TABLE9_LABELS[label]] = value
    return numbers


def _csv(name: str, columns: list[str]) -> list[dict[str, str]]:
    with (PAPER_RESULTS / name).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == columns
        return list(reader)


TABLE7_COLUMNS = ["table", "dataset", "labels", "backbone", "algorithm", "method", "loss"]
TAIL = ["recipe", "top1", "top1_std"]


def test_table6_csv_has_the_papers_72_numbers() -> None:
    rows = _csv("table6.csv", [*TABLE7_COLUMNS, *TAIL])
    assert {(r["table"], r["backbone"], r["recipe"]) for r in rows} == {
        ("6", "resnet50", "transfer")
    }
    transcribed = {
        (r["dataset"], r["labels"], r["algorithm"], r["method"], r["loss"]): (
            r["top1"],
            r["top1_std"],
        )
        for r in rows
    }
    assert len(transcribed) == len(rows) == 72
    assert transcribed == paper_table6()


def test_table9_csv_has_the_papers_15_numbers() -> None:
    rows = _csv("table9.csv", [*TABLE7_COLUMNS, "as_side", "labelled_mixup", *TAIL])
    fixed = {(r["table"], r["dataset"], r["backbone"], r["recipe"], r["top1_std"]) for r in rows}
    assert fixed == {("9", "cub200", "resnet18", "transfer", "")}
    transcribed = {
        (
            r["labels"],
            r["algorithm"],
            r["method"],
            r["loss"],
            r["as_side"],
            r["labelled_mixup"],
        ): r["top1"]
        for r in rows
    }
    assert len(transcribed) == len(rows) == 15
    assert transcribed == paper_table9()


def test_hand_copied_values() -> None:
    # Read off the paper by eye, so that a parser bug cannot hide a transcription error.
    six = {
        (r["dataset"], r["labels"], r["algorithm"], r["method"], r["loss"]): (
            r["top1"],
            r["top1_std"],
        )
        for r in load_paper_results()
        if r["table"] == "6"
    }
    assert six[("cub200", 0.15, "fine_tuning", "vanilla", "ce")] == (45.25, 0.12)
    assert six[("aircraft", 0.3, "co_tuning", "mixup", "dm_ce")] == (65.60, 0.41)
    assert six[("cars", 0.5, "self_tuning", "mixup", "dm_ce")] == (91.26, 0.19)
    assert six[("cars", 0.15, "bss", "vanilla", "ce")] == (40.57, 0.12)
    assert six[("aircraft", 0.5, "self_tuning", "mixup", "mce")] == (81.46, 0.27)
    nine = {
        (r["labels"], r["loss"], r["as_side"], r["labelled_mixup"]): r["top1"]
        for r in load_paper_results()
        if r["table"] == "9"
    }
    assert nine[(0.15, "ce", "labelled_minor", "none")] == 57.82
    assert nine[(0.3, "mce", "none", "none")] == 72.81
    assert nine[(0.5, "mce", "labelled_major", "mce")] == 74.89
    assert nine[(0.15, "mce", "labelled_minor", "mce")] == 62.97
    assert nine[(0.5, "dm_ce", "labelled_minor", "mce")] == 77.68


# --- the specs -----------------------------------------------------------------------------------


def test_tl_table6_runs_exactly_the_tables_cells() -> None:
    spec = load_spec(SPECS / "tl_table6.yaml")
    cells = expand(spec)
    ours = {(c.dataset, c.labels_text, c.backbone, c.algorithm, c.method, c.loss) for c in cells}
    paper = {
        (r["dataset"], r["labels"], r["backbone"], r["algorithm"], r["method"], r["loss"])
        for r in _csv("table6.csv", [*TABLE7_COLUMNS, *TAIL])
    }
    assert len(cells) == len(ours) == 72 and ours == paper
    assert spec.grid.seeds == [0, 1, 2] and spec.recipe == "transfer"
    assert (spec.semi_supervised.steps, spec.semi_supervised.eval_every) == (27000, 3000)
    assert {c.as_side for c in cells} == {"labelled_minor"}
    assert {c.transfer.labelled_mixup for c in cells} == {"none"}


def test_tl_table9_runs_exactly_the_tables_cells() -> None:
    spec = load_spec(SPECS / "tl_table9.yaml")
    cells = expand(spec)
    ours = {
        (c.labels_text, c.algorithm, c.method, c.loss, c.as_side, c.transfer.labelled_mixup)
        for c in cells
    }
    assert len(cells) == len(ours) == 15 and ours == set(paper_table9())
    assert {(c.dataset, c.backbone) for c in cells} == {("cub200", "resnet18")}
    assert spec.grid.seeds == [0, 1, 2] and spec.recipe == "transfer"
    assert (spec.semi_supervised.steps, spec.semi_supervised.eval_every) == (27000, 3000)
