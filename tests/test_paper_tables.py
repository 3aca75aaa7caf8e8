"""The specs and reference numbers of the paper's Tables 2-5 (ImageNet-1k and fine-grained).

Three checks: each spec expands into the cells its grid and exclusions say (counted here from
the YAML, not by ``service.spec``); each CSV holds exactly the numbers of the paper's extracted
text, in the column reading ``search_spaces/paper_results/README.md`` argues for; and the
report shows those numbers beside our trials.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.results.paper import PAPER_RESULTS, load_paper_results
from service.results.pivot import pivot
from service.spec.cells import expand, summary, train_config, trials
from service.spec.reading import load_spec, spec_from_dict
from tests.support.paper import table_rows
from tests.support.real_data import paper_lines
from trainers.config import METHODS
from trainers.recipes import get_recipe

SPECS = Path(__file__).resolve().parents[1] / "search_spaces"
AXES = ("dataset", "backbone", "method", "loss")
CSV_COLUMNS = ["table", "dataset", "backbone", "method", "loss", "recipe", "top1"]
STATIC = ["mixup", "cutmix", "manifoldmix", "saliencymix", "fmix", "resizemix"]

# spec file -> (table, recipe, epochs the paper trains, cells, datasets, backbones)
NEW_SPECS: dict[str, tuple[str, str, int, int, set[str], set[str]]] = {
    # Sec. 4.1 (a): 100 epochs; 3 backbones x (9 methods x MCE / DM(CE) + vanilla / CE).
    "imagenet_table2": (
        "2",
        "imagenet_pytorch",
        100,
        57,
        {"imagenet"},
        {"resnet18", "resnet34", "resnet50"},
    ),
    # Sec. 4.1 (c): 100 epochs; ResNet-50, (RSB + 9 methods) x 4 losses.
    "imagenet_table3_rsb_a3": ("3", "rsb_a3", 100, 40, {"imagenet"}, {"resnet50"}),
    # Sec. 4.1 (b): 300 epochs; DeiT-S and Swin-T, (DeiT + 8 methods) x 2 losses.
    "imagenet_table4_vit": (
        "4",
        "deit",
        300,
        36,
        {"imagenet"},
        {"deit_small_patch16_224", "swin_tiny_patch4_window7_224"},
    ),
    # Sec. 4.1 fine-grained: 200 epochs; 2 data sets x 2 backbones x 8 methods x 2 losses.
    "finegrained_table5": (
        "5",
        "finegrained",
        200,
        64,
        {"cub200", "aircraft"},
        {"resnet18", "resnext50_32x4d"},
    ),
}


def read_csv(table: str) -> list[dict[str, str]]:
    with (PAPER_RESULTS / f"table{table}.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)


def csv_numbers(table: str) -> dict[tuple[str, str, str, str], float]:
    rows = read_csv(table)
    numbers = {
        (r["dataset"], r["backbone"], r["method"], r["loss"]): float(r["top1"]) for r in rows
    }
    assert len(numbers) == len(rows), "a cell is transcribed twice"
    assert {r["table"] for r in rows} == {table}
    # The recipe the table was trained with is the one its spec runs (NEW_SPECS).
    assert {r["recipe"] for r in rows} == {
        recipe for t, recipe, *_ in NEW_SPECS.values() if t == table
    }
    return numbers


# --- (a) the specs -------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def _counted_from_yaml(raw: dict[str, Any]) -> tuple[int, int]:
    """(cells, trials) from the YAML alone: the product of the axes minus excluded cells."""
    grid = raw["grid"]
    product = list(itertools.product(*(grid[axis] for axis in AXES)))
    rules = [{k: _as_list(v) for k, v in rule.items()} for rule in raw.get("exclude", [])]

    def excluded(cell: tuple[str, ...]) -> bool:
        values = dict(zip(AXES, cell, strict=True))
        return any(all(values[k] in allowed for k, allowed in r.items()) for r in rules)

    cells = len(product) - sum(excluded(cell) for cell in product)
    return cells, cells * len(grid.get("seeds", [0]))


@pytest.mark.parametrize("name", sorted(NEW_SPECS))
def test_spec_cells_and_trials(name: str) -> None:
    path = SPECS / f"{name}.yaml"
    table, recipe, epochs, cells, datasets, backbones = NEW_SPECS[name]
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    expected_cells, expected_trials = _counted_from_yaml(raw)
    assert expected_cells == cells

    spec = load_spec(path)
    info = summary(spec)
    assert spec.name == name
    assert (info["cells"], info["trials"]) == (expected_cells, expected_trials)
    assert info["seeds"] == [0, 1, 2]  # the paper reports the mean of three trials (Sec. 4)
    assert info["trials"] == 3 * cells == len(trials(spec))
    assert info["recipe"] == recipe and not info["search"]
    assert set(info["datasets"]) == datasets and set(info["backbones"]) == backbones
    assert set(info["methods"]) <= set(METHODS)
    # The header says which table it is and how to validate the file.
    header = path.read_text(encoding="utf-8").split("\nname:")[0]
    assert header.startswith(f"# Table {table}")
    assert f"dmsweep validate search_spaces/{name}.yaml" in header

    for cell in expand(spec):
        config = train_config(spec, cell, 0)
        assert config.recipe == recipe
        assert (config.epochs or get_recipe(recipe, config.recipe_overrides).epochs) == epochs


# Every paper-table spec, the table its cells reproduce and the data sets it has numbers for.
PAPER_SPECS = {
    "cifar100_table1": ("1", {"cifar100"}),
    "tiny_imagenet_table1": ("1", {"tiny_imagenet"}),
    "imagenet_table2": ("2", {"imagenet"}),
    "imagenet_table3_rsb_a3": ("3", {"imagenet"}),
    "imagenet_table4_vit": ("4", {"imagenet"}),
    "finegrained_table5": ("5", {"cub200"}),
    "robustness_table8": ("8", {"cifar100", "tiny_imagenet"}),
}
# Appendix A.3's dynamic methods: "PuzzleMix, AutoMix, and SAMix".
DYNAMIC = {"puzzlemix", "automix", "samix"}
Cell4 = tuple[str, str, str, str]


def table_cells(table: str) -> set[Cell4]:
    """The (dataset, backbone, method, loss) cells a table's CSV has a number for."""
    with (PAPER_RESULTS / f"table{table}.csv").open(newline="") as handle:
        return {
            (r["dataset"], r["backbone"], r["method"], r["loss"]) for r in csv.DictReader(handle)
        }


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_dynamic_cells_are_the_tables_dynamic_rows(name: str) -> None:
    table, datasets = PAPER_SPECS[name]
    spec_cells = {
        (c.dataset, c.backbone, c.method, c.loss) for c in expand(load_spec(SPECS / f"{name}.yaml"))
    }
    paper = {c for c in table_cells(table) if c[0] in datasets and c[2] in DYNAMIC}
    assert paper, f"Table {table} has dynamic rows"
    ours = {c for c in spec_cells if c[2] in DYNAMIC}
    # Exactly the paper's dynamic cells where the table has numbers ...
    assert {c for c in ours if c[0] in datasets} == paper
    # ... and, on a data set the extracted table lacks (Table 5's Aircraft), the same rows.
    for dataset in {c[0] for c in ours} - datasets:
        assert {c[1:] for c in ours if c[0] == dataset} == {c[1:] for c in paper}
    # Every cell of the spec has a number in the table, static or dynamic (Aircraft aside).
    assert {c for c in spec_cells if c[0] in datasets} <= table_cells(table)


def test_table5_and_table8_leave_out_the_rows_the_paper_lacks() -> None:
    # Table 5 has no PuzzleMix row, Table 8 no SAMix row (the paper's tables).
    t5 = {m for m, _ in table_rows("5")}
    assert {"automix", "samix"} <= t5 and "puzzlemix" not in t5
    for name, missing in (("finegrained_table5", "puzzlemix"), ("robustness_table8", "samix")):
        methods = {c.method for c in expand(load_spec(SPECS / f"{name}.yaml"))}
        assert missing not in methods and DYNAMIC - {missing} <= methods


def _a3_text() -> str:
    return next(line for line in paper_lines() if line.startswith("Hyper-parameter settings."))


def test_dynamic_cells_take_appendix_a3s_dm_settings() -> None:
    # A.3, spelled out from the paper: "we use alpha = 0.2 and alpha = 2 for the static and
    # dynamic methods when use the proposed DM"; "dynamic methods use eta = 1" on every data set.
    text = _a3_text()
    assert "$\\alpha = 0.2$ and $\\alpha = 2$ for the *static* and *dynamic* methods" in text
    assert text.count("*dynamic* methods use $\\eta = 1$") == 2
    assert "*cutting-based* methods use $t = 1$ and $\\xi = 0.8$" in text
    seen = set()
    for name in PAPER_SPECS:
        for cell in expand(load_spec(SPECS / f"{name}.yaml")):
            if cell.method not in DYNAMIC or not cell.loss.startswith("dm_"):
                continue
            expected: dict[str, float] = {"alpha": 2.0}
            # DM(CE)'s eta; DM(BCE)'s t and xi of the cutting-based methods (all but Mixup and
            # ManifoldMix, A.3).
            expected.update({"eta": 1.0} if cell.loss == "dm_ce" else {"t": 1.0, "xi": 0.8})
            assert cell.hyperparameters == expected, (name, cell.cell_id)
            seen.add(cell.loss)
    assert seen == {"dm_ce", "dm_bce"}


# OpenMixup's benchmark pages, the "Beta alpha" column of each method (A.3: the paper follows
# OpenMixup's alphas), for the MCE / MBCE baselines: PuzzleMix 1, AutoMix and SAMix 2 on
# Mixup_cifar.md, Mixup_imagenet.md (PyTorch-style, RSB A3, DeiT, Tiny-ImageNet) and
# Mixup_downstream.md alike.
OPENMIXUP_ALPHA = {"puzzlemix": 1.0, "automix": 2.0, "samix": 2.0}


def test_dynamic_baselines_take_openmixups_alphas() -> None:
    seen = set()
    for name in PAPER_SPECS:
        for cell in expand(load_spec(SPECS / f"{name}.yaml")):
            if cell.method in DYNAMIC and cell.loss in ("mce", "mbce"):
                assert cell.hyperparameters == {"alpha": OPENMIXUP_ALPHA[cell.method]}, (
                    name,
                    cell.cell_id,
                )
                seen.add((name, cell.method))
    assert {n for n, _ in seen} == set(PAPER_SPECS)


def test_table2_vanilla_takes_plain_ce_and_openmixup_alphas() -> None:
    cells = {c.cell_id: c for c in expand(load_spec(SPECS / "imagenet_table2.yaml"))}
    for backbone in ("resnet18", "resnet34", "resnet50"):
        assert f"imagenet/{backbone}/vanilla/ce" in cells
        assert f"imagenet/{backbone}/vanilla/mce" not in cells
        assert f"imagenet/{backbone}/mixup/ce" not in cells
    # OpenMixup's ImageNet alphas for the MCE baselines, 0.2 for cutting on ResNet-18.
    assert cells["imagenet/resnet50/cutmix/mce"].hyperparameters == {"alpha": 1.0}
    assert cells["imagenet/resnet18/cutmix/mce"].hyperparameters == {"alpha": 0.2}
    assert cells["imagenet/resnet50/mixup/mce"].hyperparameters == {"alpha": 0.2}
    # DM(CE) keeps appendix A.3's alpha 0.2, eta 0.1 (static policies on ImageNet-1k).
    assert cells["imagenet/resnet50/cutmix/dm_ce"].hyperparameters == {"alpha": 0.2, "eta": 0.1}


def test_table3_softmax_cells_turn_the_recipes_bce_off() -> None:
    spec = load_spec(SPECS / "imagenet_table3_rsb_a3.yaml")
    seen = set()
    for cell in expand(spec):
        config = train_config(spec, cell, 0)
        recipe = get_recipe(config.recipe, config.recipe_overrides)
        assert recipe.bce == (cell.loss in ("mbce", "dm_bce")), cell.cell_id
        seen.add(cell.loss)
        if cell.method == "mixup_cutmix":  # RSB: the recipe's own Mixup 0.1 / CutMix 1.0
            assert (recipe.mixup_alpha, recipe.cutmix_alpha) == (0.1, 1.0)
    assert seen == {"mce", "dm_ce", "mbce", "dm_bce"}


def test_table5_starts_from_local_imagenet_weights() -> None:
    spec = load_spec(SPECS / "finegrained_table5.yaml")
    weights = set()
    for cell in expand(spec):
        config = train_config(spec, cell, 0)
        assert config.backbone.weights is not None
        assert config.backbone.weights.startswith("/")  # taken literally: absolute
        weights.add((cell.backbone, config.backbone.weights))
    assert {b for b, _ in weights} == {"resnet18", "resnext50_32x4d"}
    assert len(weights) == 2
    # Without the weights the finegrained recipe refuses the spec.
    raw = yaml.safe_load((SPECS / "finegrained_table5.yaml").read_text(encoding="utf-8"))
    del raw["backbones"]
    with pytest.raises(ValueError, match="starts from ImageNet weights"):
        spec_from_dict(raw)


# --- (b) the CSVs against the paper's text -------------------------------------------------------

# The columns each table's rows are read as (README.md says why for Tables 3 and 5).
PAIR = ("mce", "dm_ce")
COLUMNS = {
    "2": [("imagenet", b, loss) for b in ("resnet18", "resnet34", "resnet50") for loss in PAIR],
    "3": [("imagenet", "resnet50", loss) for loss in ("mce", "dm_ce", "mbce", "dm_bce")],
    "4": [
        ("imagenet", b, loss)
        for b in ("deit_small_patch16_224", "swin_tiny_patch4_window7_224")
        for loss in PAIR
    ],
    "5": [("cub200", b, loss) for b in ("resnet18", "resnext50_32x4d") for loss in PAIR],
}
ROWS = {"2": 10, "3": 10, "4": 9, "5": 8}


def paper_table(table: str) -> dict[tuple[str, str, str, str], float]:
    """One table's numbers parsed from the extracted text's tab-separated rows."""
    rows = table_rows(table)
    numbers: dict[tuple[str, str, str, str], float] = {}
    for method, values in rows:
        assert len(values) == len(COLUMNS[table]), (method, values)
        for (dataset, backbone, loss), value in zip(COLUMNS[table], values, strict=True):
            if value == "-":  # Table 2: vanilla has no DM(CE)
                continue
            # Vanilla does not mix: its MCE-column number is plain CE training.
            loss = "ce" if method == "vanilla" else loss
            numbers[(dataset, backbone, method, loss)] = float(value)
    assert len(rows) == ROWS[table], f"Table {table}: {len(rows)} rows"
    return numbers


@pytest.mark.parametrize("table", sorted(COLUMNS))
def test_csv_matches_the_paper_text(table: str) -> None:
    assert csv_numbers(table) == paper_table(table)


def test_hand_copied_values() -> None:
    # Spelled out from the paper, so that a parser bug cannot hide a transcription error.
    t2, t3, t4, t5 = (csv_numbers(t) for t in "2345")
    # Table 2: Vanilla R-18 70.04; Mixup R-50 MCE 77.12, MD(CE) 77.41; SAMix* R-34 MD(CE) 75.02.
    assert t2[("imagenet", "resnet18", "vanilla", "ce")] == 70.04
    assert t2[("imagenet", "resnet50", "mixup", "mce")] == 77.12
    assert t2[("imagenet", "resnet50", "mixup", "dm_ce")] == 77.41
    assert t2[("imagenet", "resnet34", "samix", "dm_ce")] == 75.02
    assert ("imagenet", "resnet18", "vanilla", "dm_ce") not in t2  # "-" in the paper
    assert len(t2) == 3 + 9 * 6
    # Table 3: RSB* 76.49, 77.72, 78.08, 78.43; CutMix 76.47, 77.22, 77.62, 78.21.
    losses = ("mce", "dm_ce", "mbce", "dm_bce")
    assert [t3[("imagenet", "resnet50", "mixup_cutmix", loss)] for loss in losses] == [
        76.49,
        77.72,
        78.08,
        78.43,
    ]
    assert [t3[("imagenet", "resnet50", "cutmix", loss)] for loss in losses] == [
        76.47,
        77.22,
        77.62,
        78.21,
    ]
    # Table 4: DeiT row 79.80, 80.37 (DeiT-S), 81.28, 81.49 (Swin-T); FMix* Swin-T MCE 80.37.
    assert t4[("imagenet", "deit_small_patch16_224", "mixup_cutmix", "mce")] == 79.80
    assert t4[("imagenet", "deit_small_patch16_224", "mixup_cutmix", "dm_ce")] == 80.37
    assert t4[("imagenet", "swin_tiny_patch4_window7_224", "mixup_cutmix", "dm_ce")] == 81.49
    assert t4[("imagenet", "swin_tiny_patch4_window7_224", "fmix", "mce")] == 80.37
    assert not any(key[2] == "manifoldmix" for key in t4)  # Table 4 has no ManifoldMix row
    # Table 5: Mixup 78.39, 79.90, 84.58, 85.04; SAMix* 81.11, 81.27, 86.83, 86.95.
    assert t5[("cub200", "resnet18", "mixup", "mce")] == 78.39
    assert t5[("cub200", "resnet18", "mixup", "dm_ce")] == 79.90
    assert t5[("cub200", "resnext50_32x4d", "mixup", "mce")] == 84.58
    assert t5[("cub200", "resnext50_32x4d", "samix", "dm_ce")] == 86.95


def test_the_garbled_tables_are_read_as_documented() -> None:
    t3, t5 = csv_numbers("3"), csv_numbers("5")
    r50 = ("imagenet", "resnet50")
    # Sec. 4.1: "DM(BCE) noticeably boosts the original MBCE, e.g., +0.35%/+0.62%/+0.42% for
    # RSB/CutMix/Manifold-Mix and +0.29%/+0.11% for AutoMix/SAMix": columns 4 - 3, exactly,
    # except CutMix (0.59 in the table; README.md notes it).
    for method, gain in (("mixup_cutmix", 0.35), ("manifoldmix", 0.42), ("automix", 0.29)):
        assert t3[(*r50, method, "dm_bce")] - t3[(*r50, method, "mbce")] == pytest.approx(gain)
    assert t3[(*r50, "samix", "dm_bce")] - t3[(*r50, "samix", "mbce")] == pytest.approx(0.11)
    assert t3[(*r50, "cutmix", "dm_bce")] - t3[(*r50, "cutmix", "mbce")] == pytest.approx(0.59)
    # ... and DM(CE) gains of at most 0.79 (ManifoldMix) for the mixup methods on RSB A3.
    gains = [
        t3[(*r50, m, "dm_ce")] - t3[(*r50, m, "mce")]
        for m in {key[2] for key in t3} - {"mixup_cutmix"}
    ]
    assert max(gains) == pytest.approx(0.79) and min(gains) > 0
    assert not any(key[3] == "mbce_two" for key in t3)  # no numbers in the extracted table

    # Table 5: columns 1 and 3 are OpenMixup's CUB-200 R-18 / RX-50 baselines
    # (docs/en/mixup_benchmarks/Mixup_downstream.md: CutMix 78.40 / 85.68, FMix* 77.28 / 84.06).
    assert t5[("cub200", "resnet18", "cutmix", "mce")] == 78.40
    assert t5[("cub200", "resnext50_32x4d", "fmix", "mce")] == 84.06
    # DM(CE) beats MCE in every row ("DM(CE) noticeably boosts the original MCE for eight
    # popular mixup variants"); Aircraft is not in the extracted text and is left out.
    for (dataset, backbone, method, loss), value in t5.items():
        if loss == "dm_ce":
            assert value > t5[(dataset, backbone, method, "mce")]
    assert {key[0] for key in t5} == {"cub200"}
    assert len({key[2] for key in t5}) == 8


# --- (c) the report ------------------------------------------------------------------------------


def test_load_paper_results_reads_every_table() -> None:
    rows = load_paper_results()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["table"]] = counts.get(row["table"], 0) + 1
        assert isinstance(row["top1"], float), row
    assert counts == {
        "1": 90,
        "2": 57,
        "3": 40,
        "4": 36,
        "5": 32,
        "6": 72,
        "7": 45,
        "8": 20,
        "9": 15,
    }
    assert all(set(CSV_COLUMNS) <= set(row) for row in rows)


def _trial(
    backbone: str, method: str, loss: str, seed: int, top1: float, **extra: Any
) -> dict[str, Any]:
    return {
        "dataset": "imagenet",
        "backbone": backbone,
        "method": method,
        "loss": loss,
        "seed": seed,
        "status": "succeeded",
        "top1_median_last10": top1,
        **extra,
    }


def test_pivot_shows_table2_beside_ours() -> None:
    rows = [
        _trial("resnet18", "mixup", "mce", 0, 70.0),
        _trial("resnet18", "mixup", "mce", 1, 70.2),
        _trial("resnet18", "mixup", "dm_ce", 0, 70.5),
    ]
    table = pivot(rows)
    mce = table.cell("mixup", ("imagenet", "resnet18", "mce"))
    # Table 2, Mixup, R-18: MCE 69.98, MD(CE) 70.10.
    assert mce.paper == pytest.approx(69.98) and mce.paper_table == "2"
    assert mce.mean == pytest.approx(70.1) and mce.delta == pytest.approx(70.1 - 69.98)
    assert mce.text() == "70.10 ± 0.14 (n=2); paper 69.98, Δ +0.12"
    dm = table.cell("mixup", ("imagenet", "resnet18", "dm_ce"))
    assert dm.paper == pytest.approx(70.10) and dm.text() == "70.50 (n=1); paper 70.10, Δ +0.40"
    gain = next(g for g in table.gains if g.method == "mixup")
    assert gain.ours == pytest.approx(0.4) and gain.paper == pytest.approx(70.10 - 69.98)
    # The rest of Table 2's R-18 column comes along, marked "not run".
    assert ("imagenet", "resnet18", "ce") in table.columns
    assert table.cell("vanilla", ("imagenet", "resnet18", "ce")).text() == "not run; paper 70.04"
    assert table.cell("samix", ("imagenet", "resnet18", "dm_ce")).text() == "not run; paper 70.88"
    assert {c[:2] for c in table.columns} == {("imagenet", "resnet18")}


R50_MIXUP_MCE = ("mixup", ("imagenet", "resnet50", "mce"))


def test_pivot_table3_and_the_shared_resnet50_cells() -> None:
    # Tables 2 and 3 both give ResNet-50 MCE and DM(CE) numbers; the trials' recipe picks one.
    rows = [
        _trial("resnet50", "mixup_cutmix", "mbce", 0, 78.0, recipe="rsb_a3"),
        _trial("resnet50", "mixup", "mce", 0, 76.0, recipe="rsb_a3"),
    ]
    table = pivot(rows)
    rsb = table.cell("mixup_cutmix", ("imagenet", "resnet50", "mbce"))
    assert rsb.paper == pytest.approx(78.08) and rsb.paper_table == "3"
    assert table.cell("mixup", ("imagenet", "resnet50", "dm_bce")).paper == pytest.approx(78.28)
    # Table 3's Mixup MCE 76.01, not Table 2's 77.12.
    shared = table.cell(*R50_MIXUP_MCE)
    assert (shared.paper, shared.paper_table) == (pytest.approx(76.01), "3")
    assert shared.text() == "76.00 (n=1); paper 76.01, Δ -0.01"
    assert table.cell("mixup_cutmix", ("imagenet", "resnet50", "mce")).paper == pytest.approx(76.49)
    # Only Table 3's columns and rows: no Vanilla / CE column of Table 2.
    assert [c[2] for c in table.columns] == ["mce", "dm_ce", "mbce", "dm_bce"]
    assert "vanilla" not in table.methods

    # The same cell run with Table 2's recipe shows Table 2's number and columns.
    table2 = pivot([_trial("resnet50", "mixup", "mce", 0, 77.0, recipe="imagenet_pytorch")])
    cell = table2.cell(*R50_MIXUP_MCE)
    assert (cell.paper, cell.paper_table) == (pytest.approx(77.12), "2")
    assert [c[2] for c in table2.columns] == ["ce", "mce", "dm_ce"]
    assert "mixup_cutmix" not in table2.methods

    # A recipe the paper has no number for: no paper number, and none of the paper's cells.
    smoke = pivot([_trial("resnet50", "mixup", "mce", 0, 10.0, recipe="smoke", comparable=False)])
    assert smoke.cell(*R50_MIXUP_MCE).paper is None
    assert smoke.cell(*R50_MIXUP_MCE).text() == "10.00 (n=1)"
    assert smoke.methods == ["mixup"] and smoke.columns == [R50_MIXUP_MCE[1]]

    # Trials of both recipes in one (dataset, backbone): no single table to compare with.
    mixed = pivot([*rows, _trial("resnet50", "mixup", "mce", 1, 77.0, recipe="imagenet_pytorch")])
    assert mixed.cell(*R50_MIXUP_MCE).paper is None

    # Rows without a recipe (older results files): the lower table's, as before.
    legacy = pivot([_trial("resnet50", "mixup", "mce", 0, 76.0)])
    assert legacy.cell(*R50_MIXUP_MCE).paper_table == "2"
    assert legacy.cell("mixup_cutmix", ("imagenet", "resnet50", "mbce")).paper_table == "3"


def test_pivot_table5_cub200() -> None:
    rows = [{**_trial("resnet18", "fmix", "dm_ce", 0, 80.0), "dataset": "cub200"}]
    cell = pivot(rows).cell("fmix", ("cub200", "resnet18", "dm_ce"))
    # Table 5, FMix*, CUB-200, R-18, DM(CE): 80.10.
    assert (cell.paper, cell.paper_table) == (pytest.approx(80.10), "5")
    assert cell.delta == pytest.approx(-0.10)
