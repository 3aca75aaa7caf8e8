"""Reports: Parquet round trip, the pivot beside the paper (Table 1), rendering, transcription."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from service.results import links
from service.results.charts import gains_chart
from service.results.curves import cell_curve, epoch_history
from service.results.metrics import headline
from service.results.paper import PAPER_RESULTS, load_paper_results
from service.results.pivot import pivot
from service.results.render import to_html, to_markdown
from service.results.report import write_report
from service.results.results_file import read_results, write_results
from tests.support.paper import table_rows
from tests.support.ports import free_port

C100_R18_MCE = ("cifar100", "resnet18_cifar", "mce")
C100_R18_DM = ("cifar100", "resnet18_cifar", "dm_ce")


def trial(method: str, loss: str, seed: int, top1: float | None, **extra: Any) -> dict[str, Any]:
    row = {
        "dataset": "cifar100",
        "backbone": "resnet18_cifar",
        "method": method,
        "loss": loss,
        "seed": seed,
        "status": "succeeded" if top1 is not None else "failed",
        "top1_median_last10": top1,
        "top1_best": None if top1 is None else top1 + 0.5,
    }
    row.update(extra)
    return row


def hand_built() -> list[dict[str, Any]]:
    return [
        trial("mixup", "mce", 0, 80.0),
        trial("mixup", "mce", 1, 81.0),
        trial("mixup", "mce", 2, 82.0),
        trial("mixup", "mce", 3, None),
        trial("mixup", "mce", 4, None),
        trial("mixup", "dm_ce", 0, 83.0),
        trial("mixup", "dm_ce", 1, 84.0),
        trial("cutmix", "mce", 0, 70.0, comparable=False, epochs=10),
        trial("cutmix", "dm_ce", 0, 71.5, comparable=False, epochs=10),
    ]


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_round_trip_keeps_every_key_and_value(tmp_path: Path) -> None:
    rows = [
        {**trial("mixup", "mce", 0, 80.25), "fgsm_error": 70.5, "tag": "a<b", "lr": 0.1},
        {**trial("cutmix", "dm_ce", 1, None), "comparable": False, "epochs": 10},
        {"dataset": "cifar100", "mixed": 3, "nested": {"eta": 0.1}},
        {"dataset": "tiny_imagenet", "mixed": "three", "nested": {"eta": 1.0}},
    ]
    path = write_results(rows, tmp_path / "sub" / "results.parquet")
    back = read_results(path)
    keys = {k for row in rows for k in row}
    assert len(back) == len(rows)
    for original, read in zip(rows, back, strict=True):
        assert set(read) == keys
        for key in keys:
            assert read[key] == original.get(key), key
    assert list(back[0])[:6] == ["dataset", "backbone", "method", "loss", "seed", "status"]


# --- pivot --------------------------------------------------------------------------------------


def test_pivot_mean_std_failures_and_paper() -> None:
    table = pivot(hand_built())
    cell = table.cell("mixup", C100_R18_MCE)
    assert cell.n == 3 and cell.failed == 2
    assert cell.mean == pytest.approx(81.0) and cell.std == pytest.approx(1.0)
    # Table 1, Mixup, CIFAR-100, R-18, MCE: 79.12.
    assert cell.paper == pytest.approx(79.12) and cell.paper_table == "1"
    assert cell.delta == pytest.approx(81.0 - 79.12)
    assert cell.text() == "81.00 ± 1.00 (n=3), 2 failed; paper 79.12, Δ +1.88"

    dm = table.cell("mixup", C100_R18_DM)
    assert dm.mean == pytest.approx(83.5) and dm.std == pytest.approx(math.sqrt(0.5))
    gain = next(g for g in table.gains if g.method == "mixup")
    assert (gain.base, gain.dm) == ("mce", "dm_ce")
    assert gain.ours == pytest.approx(83.5 - 81.0)
    assert gain.paper == pytest.approx(80.24 - 79.12)


def test_pivot_not_comparable_and_not_run() -> None:
    table = pivot(hand_built())
    cutmix = table.cell("cutmix", C100_R18_MCE)
    assert not cutmix.comparable and cutmix.delta is None
    assert cutmix.paper == pytest.approx(78.17)
    assert cutmix.text() == "70.00 (n=1); paper 78.17, not comparable"
    gain = next(g for g in table.gains if g.method == "cutmix")
    assert gain.ours == pytest.approx(1.5) and not gain.comparable

    # SAMix is in Table 1 but not in our trials; columns of data sets we did not run are absent.
    assert "samix" in table.methods
    assert table.cell("samix", C100_R18_MCE).text() == "not run; paper 82.30"
    assert {c[:2] for c in table.columns} == {("cifar100", "resnet18_cifar")}


def test_pivot_without_paper_and_other_metric() -> None:
    table = pivot(hand_built(), paper=[])
    assert table.methods == ["mixup", "cutmix"]
    assert table.cell("mixup", C100_R18_MCE).paper is None
    best = pivot(hand_built(), metric="top1_best")
    assert best.cell("mixup", C100_R18_MCE).mean == pytest.approx(81.5)
    assert best.cell("mixup", C100_R18_MCE).paper is None  # the paper reports no best-epoch top-1


def test_pivot_matches_the_trials_recipe() -> None:
    # Table 1's CIFAR-100 numbers are the cifar recipe's; rows without a recipe match any.
    for recipe in ("cifar", None):
        extra = {} if recipe is None else {"recipe": recipe}
        rows = [{**row, **extra} for row in hand_built()]
        cell = pivot(rows).cell("mixup", C100_R18_MCE)
        assert (cell.paper, cell.paper_table) == (pytest.approx(79.12), "1"), recipe
    # Another recipe (a smoke run, the Tiny-ImageNet one) has no CIFAR-100 number in the paper.
    for recipe in ("smoke", "tiny_imagenet"):
        table = pivot([{**row, "recipe": recipe} for row in hand_built()])
        assert all(cell.paper is None for cell in table.cells.values()), recipe
        assert table.methods == ["mixup", "cutmix"]  # none of the paper's rows come along
        assert all(gain.paper is None for gain in table.gains)


def test_pivot_table8_on_tiny_imagenet() -> None:
    # robustness_table8.yaml trains Tiny-ImageNet with the cifar recipe (lr 0.2, 400 epochs):
    # Table 8's numbers; Table 1's Tiny-ImageNet ones are the tiny_imagenet recipe's. They
    # differ once: PuzzleMix, R-18, DM(CE) is 66.13 in Table 8, 66.52 in Table 1.
    row = {**trial("puzzlemix", "dm_ce", 0, 66.0, fgsm_error=89.0), "dataset": "tiny_imagenet"}
    key = ("puzzlemix", ("tiny_imagenet", "resnet18_cifar", "dm_ce"))
    cell = pivot([{**row, "recipe": "cifar", "comparable": False}]).cell(*key)
    assert (cell.paper, cell.paper_table) == (pytest.approx(66.13), "8")
    fgsm = pivot([{**row, "recipe": "cifar"}], metric="fgsm_error").cell(*key)
    assert fgsm.paper_table == "8" and fgsm.paper is not None
    cell = pivot([{**row, "recipe": "tiny_imagenet"}]).cell(*key)
    assert (cell.paper, cell.paper_table) == (pytest.approx(66.52), "1")


# --- rendering ----------------------------------------------------------------------------------


def test_markdown_html_and_chart(tmp_path: Path) -> None:
    rows = [*hand_built(), trial("<script>", "mce", 0, 50.0)]
    table = pivot(rows)
    markdown = to_markdown(table)
    assert "| method | cifar100 / resnet18_cifar / mce | cifar100 / resnet18_cifar / dm_ce |" in (
        markdown
    )
    assert "| mixup | 81.00 ± 1.00 (n=3), 2 failed; paper 79.12, Δ +1.88 |" in markdown
    assert "not run; paper 82.30" in markdown
    # No alpha recorded, no control: the gain against the baseline alone, ± sqrt(1 + 0.5).
    assert (
        "| cifar100 | resnet18_cifar | mixup | dm_ce - mce | +2.50 ± 1.22 | +1.12 | — | — / — / — |"
    ) in markdown

    page = to_html(table)
    assert "&lt;script&gt;" in page and "<script>" not in page

    png = gains_chart(table, tmp_path / "gains.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_write_report(tmp_path: Path) -> None:
    paths = write_report(hand_built(), tmp_path / "out")
    assert {p.name for p in paths.values()} == {
        "results.parquet",
        "report.md",
        "report.html",
        "gains.png",
    }
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert len(read_results(paths["results"])) == len(hand_built())


# --- the paper's numbers ------------------------------------------------------------------------

# Table 1's ten columns in order.
TABLE1_COLUMNS = [
    (dataset, backbone, loss)
    for dataset, backbones in (
        ("cifar100", ("resnet18_cifar", "resnext50_cifar", "wrn28_8")),
        ("tiny_imagenet", ("resnet18_cifar", "resnext50_cifar")),
    )
    for backbone in backbones
    for loss in ("mce", "dm_ce")
]


def paper_table1() -> dict[tuple[str, str, str, str], float]:
    """Table 1's numbers parsed from the paper's extracted text (its tab-separated rows)."""
    numbers = {}
    for method, values in table_rows("1"):
        assert len(values) == len(TABLE1_COLUMNS), (method, values)
        for (dataset, backbone, loss), value in zip(TABLE1_COLUMNS, values, strict=True):
            numbers[(dataset, backbone, method, loss)] = float(value)
    return numbers


def test_table1_csv_matches_the_paper_text() -> None:
    parsed = paper_table1()
    with (PAPER_RESULTS / "table1.csv").open(newline="") as handle:
        transcribed = {
            (r["dataset"], r["backbone"], r["method"], r["loss"]): float(r["top1"])
            for r in csv.DictReader(handle)
        }
    # Mixup and CutMix, spelled out: a parser bug must not hide a transcription error.
    assert parsed[("cifar100", "resnet18_cifar", "mixup", "mce")] == 79.12
    assert parsed[("tiny_imagenet", "resnext50_cifar", "cutmix", "dm_ce")] == 67.46
    assert len(parsed) == 90
    assert transcribed == parsed


def test_load_paper_results() -> None:
    rows = load_paper_results()
    tables = {row["table"] for row in rows}
    # tests/test_paper_tables.py: 2 to 5; tests/test_ssl_report.py: 7; test_transfer_report.py:
    # 6 and 9
    assert tables == {"1", "2", "3", "4", "5", "6", "7", "8", "9"}
    fgsm = [r for r in rows if r["table"] == "8" and r["method"] == "mixup" and r["loss"] == "mce"]
    assert {r["dataset"]: r["fgsm_error"] for r in fgsm} == {
        "cifar100": 70.28,
        "tiny_imagenet": 89.06,
    }
    # The recipe of each table's numbers (README.md): Table 1 by data set, Table 8 cifar.
    recipes = {(r["table"], r["dataset"], r["recipe"]) for r in rows if r["table"] in "18"}
    assert recipes == {
        ("1", "cifar100", "cifar"),
        ("1", "tiny_imagenet", "tiny_imagenet"),
        ("8", "cifar100", "cifar"),
        ("8", "tiny_imagenet", "cifar"),
    }


# --- what a gain is made of: baseline, control, spread, lambda mode -------------------------------


def with_alpha(row: dict[str, Any], alpha: float, control: bool = False) -> dict[str, Any]:
    """``row`` with its cell's alpha and cell id (a control's ends in /control)."""
    cell = "/".join(row[axis] for axis in ("dataset", "backbone", "method", "loss"))
    return {**row, "hp.alpha": alpha, "cell": cell + ("/control" if control else "")}


def controlled() -> list[dict[str, Any]]:
    """Mixup: MCE at its tuned alpha 1, DM(CE) at 0.2, and the control (MCE at 0.2)."""
    return [
        *(with_alpha(trial("mixup", "mce", s, v), 1.0) for s, v in enumerate((80.0, 81.0, 82.0))),
        *(with_alpha(trial("mixup", "dm_ce", s, v), 0.2) for s, v in enumerate((83.0, 84.0))),
        *(with_alpha(trial("mixup", "mce", s, v), 0.2, True) for s, v in enumerate((82.0, 84.0))),
    ]


def test_both_gains_with_their_spread_and_the_papers_beside_the_first() -> None:
    table = pivot(controlled())
    # The control is no column of its own and does not join the baseline's cell.
    assert table.cell("mixup", C100_R18_MCE).n == 3
    assert table.controls[("mixup", C100_R18_MCE)].mean == pytest.approx(83.0)
    (gain,) = [g for g in table.gains if g.method == "mixup"]
    # Baseline: 83.5 - 81; std sqrt(0.5 + 1). Control: 83.5 - 83; std sqrt(0.5 + 2).
    assert gain.ours == pytest.approx(2.5) and gain.std == pytest.approx(math.sqrt(1.5))
    assert gain.control == pytest.approx(0.5) and gain.control_std == pytest.approx(math.sqrt(2.5))
    assert gain.paper == pytest.approx(80.24 - 79.12) and not gain.control_is_base
    assert gain.alphas == (1.0, 0.2, 0.2)
    line = (
        "| cifar100 | resnet18_cifar | mixup | dm_ce - mce | +2.50 ± 1.22 | +1.12 | +0.50 ± 1.58 "
    )
    assert line + "| 1 / 0.2 / 0.2 |" in to_markdown(table)


def test_a_baseline_at_the_dm_alpha_is_its_own_control() -> None:
    rows = [with_alpha(r, 0.2) for r in hand_built() if r["method"] == "mixup"]
    (gain,) = pivot(rows).gains
    assert gain.control_is_base and gain.control == pytest.approx(gain.ours)
    assert gain.control == pytest.approx(2.5)
    assert "+2.50 ± 1.22 (the baseline ran at DM's alpha)" in to_markdown(pivot(rows))


def test_lambda_drawn_per_sample_is_not_comparable() -> None:
    rows = [
        {**r, "lambda_mode": "sample", "comparable": False} if r["loss"] == "dm_ce" else r
        for r in hand_built()
    ]
    table = pivot(rows)
    dm = table.cell("mixup", C100_R18_DM)
    assert not dm.comparable and dm.delta is None
    assert dm.text() == "83.50 ± 0.71 (n=2); paper 80.24, not comparable (lambda drawn per sample)"
    batch = table.cell("mixup", C100_R18_MCE)
    assert batch.comparable and batch.delta == pytest.approx(81.0 - 79.12)
    assert not next(g for g in table.gains if g.method == "mixup").comparable


def test_short_runs_headline_the_final_top1(tmp_path: Path) -> None:
    assert headline([{"epochs": 800}, {}]).metric == "top1_median_last10"
    short = headline([{"epochs": 800}, {"epochs": 10}, {"epochs": 2}])
    assert short.metric == "val_top1"
    assert "2, 10 epochs" in short.reason and "the first included" in short.reason
    rows = [{**r, "epochs": 10, "val_top1": r["top1_median_last10"]} for r in hand_built()]
    markdown = write_report(rows, tmp_path)["markdown"].read_text()
    assert markdown.startswith("## val_top1\n") and "Headline: final top-1" in markdown


# --- learning curves from the trials' logs --------------------------------------------------------


def test_epoch_lines_as_the_worker_writes_them_make_curves(tmp_path: Path) -> None:
    from service.sweep.worker import _epoch_line, append_log

    log = tmp_path / "trial.log"
    append_log(log, "start: worker on node n, pid 1")
    for epoch, top1 in ((1, 10.0), (2, 20.5), (2, 21.25), (3, 30.0)):  # epoch 2 again: resumed
        append_log(log, _epoch_line({"epoch": epoch, "train_loss": 2.0, "val_top1": top1}))
    append_log(log, _epoch_line({"epoch": 3, "val_top1": 30.0, "top1_best": 30.0}))
    history = epoch_history(log.read_text())
    assert sorted(history) == [1, 2, 3]
    assert history[2] == {"train_loss": 2.0, "val_top1": 21.25}
    assert history[3] == {"val_top1": 30.0, "top1_best": 30.0}

    other = {1: {"val_top1": 14.0}, 2: {"val_top1": 22.25}}
    curve = cell_curve("c", "val_top1", [history, other])
    assert curve is not None and curve.epochs == [1, 2, 3] and curve.n == [2, 2, 1]
    assert curve.mean == pytest.approx([12.0, 21.75, 30.0])
    assert curve.std[:2] == pytest.approx([math.sqrt(8), math.sqrt(0.5)]) and curve.std[2] is None
    assert cell_curve("c", "val_top1_ema", [history]) is None


# --- links to MLflow ------------------------------------------------------------------------------


def test_run_links_survive_an_absent_server() -> None:
    assert links.trial_run_links(None).urls == {}
    away = {
        "uri": f"http://127.0.0.1:{free_port()}",
        "experiment_id": "1",
        "parent_run_id": "p",
        "sweep_id": "s",
    }
    found = links.trial_run_links(away)
    assert found.urls == {} and "could not be read" in found.note


def test_the_live_progress_ranks_trials_as_the_report_headlines_them():
    """``dmsweep run``'s live line and the service's "best so far" name the report's best trial:
    the final top-1 for runs of 10 epochs or fewer, the paper's metric for longer ones, and a
    search's own metric and direction when it has one."""
    from service.results.metrics import ranking
    from service.spec.reading import spec_from_dict
    from tests.support.specs import tiny_spec

    assert ranking(spec_from_dict(tiny_spec(epochs=2))) == ("val_top1", "max")
    assert ranking(spec_from_dict(tiny_spec(epochs=11))) == ("top1_median_last10", "max")
    # Without `epochs`, the recipe's: the smoke recipe is short.
    short = tiny_spec()
    del short["epochs"]
    assert ranking(spec_from_dict(short)) == ("val_top1", "max")
    searched = tiny_spec(
        search={"parameters": {"lr": [0.1, 0.2]}, "sampler": "grid", "metric": "fgsm_error"}
    )
    searched["search"]["mode"] = "min"
    assert ranking(spec_from_dict(searched)) == ("fgsm_error", "min")
