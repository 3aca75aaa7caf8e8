"""Parity with the paper's sources: the typed-in settings of ``search_spaces/paper_results/
parity.csv`` against what the paper-table specs resolve to.

The rule (README.md, "Settings that stand for the paper"): where the configuration that produced
a paper number can be identified (OpenMixup's, appendix A.3), follow it; otherwise follow the
paper's text; where both exist and disagree, record both and which was followed and why.
parity.csv holds, per cell of every paper-table spec and per setting, the source's value and its
path (an OpenMixup file or a line of ``shared/paper/decoupled-mixup.txt``), the text's value where
it disagrees, which was followed, and the reason where ours differs from the source. The tests
fail where a spec resolves to another value without a stated reason, and where a cell or a
setting has no row. ``top1`` rows hold OpenMixup's published accuracy where it equals the paper's
number (the cell is *verified*), empty with the reason otherwise.

The README's parity table is generated from parity.csv and the specs:
``.venv/bin/python -m tests.test_parity`` rewrites it; a test checks it is current.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

from service.spec.cells import Cell, trials
from service.spec.model import SweepSpec
from service.spec.reading import load_spec
from trainers.recipes import Recipe, get_recipe

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "search_spaces" / "paper_results"
PARITY = RESULTS / "parity.csv"
README = RESULTS / "README.md"
BEGIN, END = "<!-- parity table: begin -->", "<!-- parity table: end -->"

# Every paper-table spec and the table its cells reproduce.
SPECS = {
    "cifar100_table1": "1",
    "tiny_imagenet_table1": "1",
    "imagenet_table2": "2",
    "imagenet_table3_rsb_a3": "3",
    "imagenet_table4_vit": "4",
    "finegrained_table5": "5",
    "robustness_table8": "8",
}
COLUMNS = [
    "table",
    "dataset",
    "backbone",
    "method",
    "loss",
    "setting",
    "source_value",
    "source",
    "text_value",
    "text_source",
    "followed",
    "reason",
]
TRAINING = ("epochs", "lr", "weight_decay", "batch_size", "augmentation")
# Table 10's further ingredients, compared for the DeiT and RSB A3 recipes (Tables 3 and 4).
INGREDIENTS = ("drop_path", "repeated_aug", "grad_clip", "ema_decay")
INGREDIENT_RECIPES = ("deit", "rsb_a3")
Key = tuple[str, str, str, str, str]  # table, dataset, backbone, method, loss


def number(value: float) -> str:
    """A setting as parity.csv writes it: ``0.1``, ``0.0005``, ``800``."""
    return format(value, "g")


def augmentation(recipe: Recipe) -> str:
    """The recipe's augmentation in parity.csv's notation: ``rrc 0.5-1 + flip; test crop 0.875``."""
    if recipe.train_crop == "random_crop":
        parts = [f"crop pad 4 {recipe.crop_padding_mode}"]
    else:
        low, high = recipe.rrc_scale
        parts = [f"rrc {number(low)}-{number(high)}"]
    parts.append("flip")
    if recipe.randaugment is not None:
        parts.append(recipe.randaugment)
    if recipe.random_erasing > 0:
        parts.append(f"erase {number(recipe.random_erasing)}")
    return " + ".join(parts) + f"; test crop {number(recipe.test_crop)}"


@cache
def specs() -> dict[str, SweepSpec]:
    return {name: load_spec(REPO / "search_spaces" / f"{name}.yaml") for name in SPECS}


@cache
def ours() -> dict[Key, dict[str, str]]:
    """What each cell of the paper-table specs resolves to, per setting, as strings."""
    resolved: dict[Key, dict[str, str]] = {}
    for name, spec in specs().items():
        for cell, seed, config in trials(spec):
            if seed != spec.grid.seeds[0]:
                continue
            recipe = get_recipe(config.recipe, config.recipe_overrides)
            values = {
                "epochs": str(config.epochs or recipe.epochs),
                "lr": number(recipe.lr),
                "weight_decay": number(recipe.weight_decay),
                "batch_size": str(config.batch_size or recipe.batch_size),
                "augmentation": augmentation(recipe),
            }
            if recipe.min_lr:  # the paper's recipes decay to 0; a config may end above it
                values["min_lr"] = number(recipe.min_lr)
            if cell.method == "mixup_cutmix" and config.mixing.alpha is None:
                assert recipe.mixup_alpha is not None and recipe.cutmix_alpha is not None
                values["alpha"] = f"{number(recipe.mixup_alpha)}/{number(recipe.cutmix_alpha)}"
            elif cell.method != "vanilla":
                alpha = config.mixing.alpha
                values["alpha"] = "-" if alpha is None else number(alpha)
            for setting in ("eta", "xi", "t"):
                value = getattr(config.loss, setting)
                if value is not None:
                    values[setting] = number(value)
            if config.recipe in INGREDIENT_RECIPES:
                values["drop_path"] = number(recipe.drop_path)
                values["repeated_aug"] = "yes" if recipe.repeated_aug else "no"
                values["grad_clip"] = "-" if recipe.grad_clip is None else number(recipe.grad_clip)
                values["ema_decay"] = "-" if recipe.ema_decay is None else number(recipe.ema_decay)
            resolved[key_of(SPECS[name], cell)] = values
    return resolved


def key_of(table: str, cell: Cell) -> Key:
    return (table, cell.dataset, cell.backbone, cell.method, cell.loss)


def read_parity() -> list[dict[str, str]]:
    with PARITY.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def row_key(row: dict[str, str]) -> Key:
    return (row["table"], row["dataset"], row["backbone"], row["method"], row["loss"])


def paper_numbers() -> dict[Key, str]:
    numbers = {}
    for path in sorted(RESULTS.glob("table*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            for r in csv.DictReader(handle):
                numbers[(r["table"], r["dataset"], r["backbone"], r["method"], r["loss"])] = r[
                    "top1"
                ]
    return numbers


# --- the tests -----------------------------------------------------------------------------------


def test_every_cell_and_setting_has_one_row() -> None:
    expected = {(key, s) for key, values in ours().items() for s in ("top1", *values)}
    rows = [(row_key(r), r["setting"]) for r in read_parity()]
    assert len(rows) == len(set(rows)), "a setting is typed in twice"
    assert set(rows) - expected == set(), "rows for cells or settings the specs do not have"
    assert expected - set(rows) == set(), "cells or settings of the specs without a source"


def differences(rows: list[dict[str, str]], resolved: dict[Key, dict[str, str]]) -> list[str]:
    """Rows whose setting the specs resolve to another value without a stated reason."""
    problems = []
    for row in rows:
        if row["setting"] == "top1":
            continue
        value = resolved[row_key(row)][row["setting"]]
        where = f"{'/'.join(row_key(row))} {row['setting']}: ours {value}"
        if row["followed"] == "text" and value != row["text_value"]:
            problems.append(f"{where}, the text followed says {row['text_value']}")
        elif value != row["source_value"] and not row["reason"]:
            problems.append(f"{where}, source {row['source_value']} ({row['source']}), no reason")
    return problems


def test_the_specs_resolve_to_the_sources_or_say_why() -> None:
    problems = differences(read_parity(), ours())
    assert not problems, "\n".join(problems)


def test_a_difference_without_a_reason_fails() -> None:
    # The check above can fail: a source value changed without a reason is reported.
    rows = read_parity()
    row = next(r for r in rows if r["setting"] == "weight_decay" and r["backbone"] == "wrn28_8")
    changed = {**row, "source_value": "0.0001", "text_value": "", "followed": "", "reason": ""}
    assert differences([changed], ours()) == [
        f"{'/'.join(row_key(row))} weight_decay: ours 0.001, source 0.0001 ({row['source']}), "
        "no reason"
    ]
    assert differences([row], ours()) == []


def test_text_and_configuration_disagreeing_say_which_was_followed() -> None:
    for row in read_parity():
        where = f"{'/'.join(row_key(row))} {row['setting']}"
        assert row["followed"] in ("", "config", "text"), where
        if row["text_value"]:
            assert row["followed"] and row["text_source"] and row["reason"], where
            assert row["text_value"] != row["source_value"], where
        else:
            assert not row["followed"] and not row["text_source"], where
        if row["setting"] != "top1" or row["source_value"]:
            assert row["source"], f"{where}: no source"


def test_verified_cells_carry_the_papers_number() -> None:
    paper = paper_numbers()
    for row in read_parity():
        if row["setting"] != "top1":
            continue
        where = "/".join(row_key(row))
        if row["source_value"]:
            assert row_key(row) in paper, where
            assert float(row["source_value"]) == float(paper[row_key(row)]), where
            assert "openmixup:docs/en/mixup_benchmarks/" in row["source"], where
        else:
            assert row["reason"], f"{where}: unverified without a reason"


def test_the_readme_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    current = text.split(BEGIN)[1].split(END)[0]
    assert current == "\n" + render() + "\n", (
        "the parity table is stale: run .venv/bin/python -m tests.test_parity"
    )


# --- the README table ----------------------------------------------------------------------------


def status(key: Key, top1: dict[Key, dict[str, str]]) -> str:
    """verified (OpenMixup published the number), twin (a DM cell whose baseline is verified),
    or unverified."""
    table, dataset, backbone, method, loss = key
    if top1[key]["source_value"]:
        return "verified"
    twin = {"dm_ce": "mce", "dm_bce": "mbce"}.get(loss)
    if twin and top1.get((table, dataset, backbone, method, twin), {}).get("source_value"):
        return "twin"
    return "unverified"


def render() -> str:
    """The parity table of README.md, from parity.csv and the specs."""
    rows = read_parity()
    resolved = ours()
    by_cell: dict[Key, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        by_cell[row_key(row)][row["setting"]] = row
    top1 = {key: settings["top1"] for key, settings in by_cell.items()}
    notes: dict[str, int] = {}
    sources: dict[str, int] = {}
    augmentations: dict[str, int] = {}

    def ref(table: dict[str, int], text: str) -> int:
        return table.setdefault(text, len(table) + 1)

    def shown(row: dict[str, str], value: str, fmt: str = "{}") -> str:
        source = row["source_value"]
        text = fmt.format(source) if source else "-"
        if value != source:
            text += f" ≠ {fmt.format(value)}"
        if row["text_value"]:
            text += f", text {fmt.format(row['text_value'])} ({row['followed']} followed)"
        if row["reason"]:
            text += f" n{ref(notes, row['reason'])}"
        return text

    lines = []
    for name, table in SPECS.items():
        keys = [key_of(table, cell) for cell, seed, _ in trials(specs()[name])]
        keys = list(dict.fromkeys(keys))
        lines += [
            f"### Table {table}: `{name}.yaml`",
            "",
            "| cell | status | alpha | eta / xi / t | epochs | lr | weight decay | batch | "
            "augmentation | Table 10 ingredients | sources |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key in keys:
            settings = by_cell[key]
            values = resolved[key]
            used = sorted({ref(sources, r["source"]) for r in settings.values() if r["source"]})
            dm = " / ".join(
                f"{s} {shown(settings[s], values[s])}" for s in ("eta", "xi", "t") if s in settings
            )
            alpha = shown(settings["alpha"], values["alpha"]) if "alpha" in settings else "-"
            aug_row = settings["augmentation"]
            aug = shown(
                {
                    **aug_row,
                    "source_value": f"A{ref(augmentations, aug_row['source_value'])}",
                    "text_value": (
                        f"A{ref(augmentations, aug_row['text_value'])}"
                        if aug_row["text_value"]
                        else ""
                    ),
                },
                f"A{ref(augmentations, values['augmentation'])}",
            )
            state = status(key, top1)
            if state == "unverified" and not key[4].startswith("dm"):
                state = settings["top1"]["reason"]  # says what OpenMixup has instead
            cells = [
                "/".join(key[1:]),
                state,
                alpha,
                dm or "-",
                *(shown(settings[s], values[s]) for s in TRAINING[:-1]),
                aug,
                "; ".join(
                    f"{s} {shown(settings[s], values[s])}" for s in INGREDIENTS if s in settings
                )
                or "-",
                " ".join(f"s{n}" for n in used),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Augmentations:", ""]
    lines += [f"* A{n}: {text}" for text, n in augmentations.items()]
    lines += ["", "Sources (`openmixup:` paths are relative to Westlake-AI/openmixup):", ""]
    lines += [f"* s{n}: {text}" for text, n in sources.items()]
    lines += ["", "Notes:", ""]
    lines += [f"* n{n}: {text}" for text, n in notes.items()]
    return "\n".join(lines)


def write_readme() -> None:
    text = README.read_text(encoding="utf-8")
    before, rest = text.split(BEGIN)
    after = rest.split(END)[1]
    README.write_text(before + BEGIN + "\n" + render() + "\n" + END + after, encoding="utf-8")


if __name__ == "__main__":
    write_readme()
    sys.exit(0)
