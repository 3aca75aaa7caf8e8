"""The transfer cells of a spec: the as_side axis, its ids and matches, the transfer settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.spec.cells import expand, summary, train_config
from service.spec.reading import spec_from_dict

# Table 9's five rows (Sec. 4.5) on a small grid: Self-Tuning; +MCE (labelled mixing, no AS);
# +MCE+AS on either side of lambda and +DM(CE)+AS(lambda <= 0.5), each with the labelled MCE.
TABLE_9: dict[str, Any] = {
    "name": "table9",
    "grid": {
        "dataset": ["synthetic"],
        "labels": {"synthetic": [0.15]},
        "backbone": ["smallnet"],
        "algorithm": ["self_tuning"],
        "method": ["vanilla", "mixup"],
        "loss": ["ce", "mce", "dm_ce"],
        "as_side": ["labelled_minor", "labelled_major", "none"],
    },
    "recipe": "transfer",
    "recipe_overrides": {"pretrained_init": False},
    "semi_supervised": {"steps": 20, "eval_every": 10},
    "exclude": [
        {"method": "vanilla", "loss": ["mce", "dm_ce"]},
        {"method": "vanilla", "as_side": ["labelled_major", "none"]},
        {"method": "mixup", "loss": "ce"},
        {"loss": "dm_ce", "as_side": ["labelled_major", "none"]},
    ],
    "overrides": [
        {
            "match": {"method": "mixup", "as_side": ["labelled_minor", "labelled_major"]},
            "set": {"transfer": {"labelled_mixup": "mce"}},
        }
    ],
}


def spec(**changes: Any):
    raw = copy.deepcopy(TABLE_9)
    for key, value in changes.items():
        if key in raw["grid"]:
            raw["grid"][key] = value
        else:
            raw[key] = value
    return spec_from_dict(raw)


def refusal(**changes: Any) -> str:
    with pytest.raises(ValueError) as caught:
        spec(**changes)
    return str(caught.value)


def test_table_9s_rows_are_five_cells_told_apart_by_their_ids():
    cells = expand(spec())
    prefix = "synthetic@0.15/smallnet/self_tuning/"
    assert [cell.cell_id.removeprefix(prefix) for cell in cells] == [
        "vanilla/ce",
        "mixup/mce",
        "mixup/mce/as_labelled_major",
        "mixup/mce/as_none",
        "mixup/dm_ce",
    ]
    assert summary(spec())["as_sides"] == ["labelled_minor", "labelled_major", "none"]


def test_each_cell_trains_with_its_side_and_the_matching_transfer_settings():
    made = spec()
    configs = {
        cell.cell_id.split("self_tuning/")[1]: train_config(made, cell, 0) for cell in expand(made)
    }
    sides = {key: c.semi_supervised.as_side for key, c in configs.items()}
    mixups = {key: c.transfer.labelled_mixup for key, c in configs.items()}
    assert sides == {
        "vanilla/ce": "labelled_minor",
        "mixup/mce": "labelled_minor",
        "mixup/mce/as_labelled_major": "labelled_major",
        "mixup/mce/as_none": "none",
        "mixup/dm_ce": "labelled_minor",
    }
    # The override reaches the AS cells only; the vanilla and as_none cells keep the default.
    assert mixups == {
        "vanilla/ce": "none",
        "mixup/mce": "mce",
        "mixup/mce/as_labelled_major": "mce",
        "mixup/mce/as_none": "none",
        "mixup/dm_ce": "mce",
    }
    # Self-Tuning draws 24 + 24 images a step (mu 1), the transfer recipe's batch.
    assert {c.unlabelled_ratio() for c in configs.values()} == {1}


def test_the_grid_multiplies_by_the_as_sides():
    assert spec().grid.size() == 1 * 1 * 1 * 2 * 3 * 3


def test_a_side_where_no_as_term_is_refused_naming_the_cell():
    # Without the exclusion the vanilla cells meet labelled_major and none.
    message = refusal(exclude=TABLE_9["exclude"][:1] + TABLE_9["exclude"][2:])
    assert "cell synthetic@0.15/smallnet/self_tuning/vanilla/ce/as_labelled_major" in message
    assert "as_side (the grid's as_side) 'labelled_major' needs a mixing policy" in message


def test_as_side_none_is_refused_for_an_algorithm_without_labelled_mixing():
    message = refusal(algorithm=["fine_tuning"])
    assert "as_side 'none' mixes labelled images among themselves" in message
    assert "only self_tuning does" in message


def test_the_labelled_mixup_without_an_as_term_is_refused():
    overrides = [{"match": {"method": "mixup"}, "set": {"transfer": {"labelled_mixup": "mce"}}}]
    message = refusal(overrides=overrides)
    assert "cell synthetic@0.15/smallnet/self_tuning/mixup/mce/as_none" in message
    assert "transfer.labelled_mixup 'mce' adds labelled mixing beside an AS term" in message


def test_the_spec_gives_the_side_on_the_grid_not_in_semi_supervised():
    message = refusal(semi_supervised={"steps": 20, "eval_every": 10, "as_side": "labelled_major"})
    assert "semi_supervised.as_side" in message and "set grid.as_side" in message


def test_transfer_settings_without_a_transfer_cell_have_no_effect():
    raw = copy.deepcopy(TABLE_9)
    raw["grid"].update(algorithm=["fixmatch"], as_side=["labelled_minor"])
    raw.update(recipe="ssl", exclude=TABLE_9["exclude"][:1] + TABLE_9["exclude"][2:3])
    raw.pop("overrides")
    raw.pop("recipe_overrides")
    raw["transfer"] = {"as_threshold": 0.5}
    with pytest.raises(ValueError) as caught:
        spec_from_dict(raw)
    assert "transfer: has no effect: no cell trains with a transfer algorithm" in str(caught.value)


def test_a_match_names_a_side_of_the_grid():
    exclude = [*TABLE_9["exclude"], {"as_side": "labelled_major", "method": "cutmix"}]
    message = refusal(exclude=exclude)
    assert "cutmix is not in grid.method" in message
    narrowed = copy.deepcopy(TABLE_9)
    narrowed["grid"]["as_side"] = ["labelled_minor"]
    narrowed["exclude"] = [{"method": "vanilla", "loss": ["mce", "dm_ce"]}, {"as_side": "none"}]
    narrowed.pop("overrides")
    with pytest.raises(ValueError) as caught:
        spec_from_dict(narrowed)
    assert "none is not in grid.as_side (labelled_minor)" in str(caught.value)


def test_yaml_words_that_read_as_booleans_are_not_sides():
    # YAML 1.1 reads off / no as false: the sides are names that stay strings.
    with pytest.raises(ValueError, match="as_side"):
        spec(as_side=[False])


def test_the_records_keep_the_side_and_the_labelled_mixing_and_older_records_read_back(tmp_path):
    from service.results.folder import SweepFolder
    from service.results.records import TrialRecord, TrialState
    from service.sweep.trial import build_context, trial_record

    context = build_context(spec(), SweepFolder(tmp_path), None)
    prefix = "synthetic@0.15/smallnet/self_tuning/"
    major = trial_record(
        context, "t", prefix + "mixup/mce/as_labelled_major", 0, {}, TrialState.SUCCEEDED
    )
    plain = trial_record(context, "u", prefix + "vanilla/ce", 0, {}, TrialState.SUCCEEDED)
    assert (major.as_side, major.labelled_mixup) == ("labelled_major", "mce")
    # The default side and no labelled mixing are not stored: older records read the same.
    assert (plain.as_side, plain.labelled_mixup) == (None, None)
    row = major.to_row()
    assert (row["as_side"], row["labelled_mixup"]) == ("labelled_major", "mce")
    assert TrialRecord.from_row(row) == major
    assert "as_side" not in plain.to_row() and TrialRecord.from_row(plain.to_row()) == plain


def test_a_transfer_cell_compares_with_the_paper_only_at_its_steps_and_interval():
    from service.spec.cells import comparable

    def departures(semi_supervised: dict[str, int]) -> set[tuple[str, ...]]:
        raw = copy.deepcopy(TABLE_9)
        raw.update(semi_supervised=semi_supervised, recipe_overrides={})
        raw["grid"]["dataset"] = ["cub200"]
        raw["grid"]["labels"] = {"cub200": [0.15]}
        raw["backbones"] = {"smallnet": {"weights": "/data/w.pth"}}
        made = spec_from_dict(raw)
        return {cell.departures for cell in expand(made)}, {
            comparable(made, c) for c in expand(made)
        }

    # Sec. 4.3's 27k steps with Self-Tuning's --test_interval 3000: the paper's.
    assert departures({"steps": 27_000, "eval_every": 3000}) == ({()}, {True})
    assert departures({"steps": 3000, "eval_every": 300}) == ({("semi_supervised",)}, {False})
    # Table 7's schedule is not Table 6's.
    assert departures({"steps": 2**20, "eval_every": 5000})[1] == {False}
