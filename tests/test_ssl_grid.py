"""The grid's algorithm and labels axes: cells, ids, precedence, defaults and refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.plan.planner import workloads
from service.results.metrics import ranking
from service.results.records import TrialRecord, TrialState
from service.spec.cells import comparable, expand, summary, train_config
from service.spec.reading import spec_from_dict

SSL: dict[str, Any] = {
    "name": "ssl",
    "grid": {
        "dataset": ["cifar10", "cifar100"],
        "labels": {"cifar10": [250, 4000], "cifar100": [400]},
        "backbone": ["wrn28_2"],
        "algorithm": ["labelled_only", "fixmatch", "mixmatch"],
        "method": ["vanilla", "mixup"],
        "loss": ["ce", "mce", "dm_ce"],
    },
    "recipe": "ssl",
    "exclude": [
        {"method": "vanilla", "loss": ["mce", "dm_ce"]},
        {"method": "mixup", "loss": "ce"},
        {"algorithm": "mixmatch", "method": "vanilla"},
        {"algorithm": "labelled_only", "method": "mixup"},
    ],
}


def spec(**changes: Any):
    raw = copy.deepcopy(SSL)
    for key, value in changes.items():
        if key in raw["grid"] or key in ("seeds",):
            raw["grid"][key] = value
        else:
            raw[key] = value
    return spec_from_dict(raw)


def refusal(**changes: Any) -> str:
    with pytest.raises(ValueError) as caught:
        spec(**changes)
    return str(caught.value)


def test_cells_are_the_product_of_labels_per_data_set_and_algorithms():
    cells = expand(spec())
    # 3 (data set, labels) x (labelled_only ce, fixmatch ce / mce / dm_ce, mixmatch mce / dm_ce)
    assert len(cells) == 3 * 6
    ids = [cell.cell_id for cell in cells]
    assert ids[:6] == [
        "cifar10@250/wrn28_2/labelled_only/vanilla/ce",
        "cifar10@250/wrn28_2/fixmatch/vanilla/ce",
        "cifar10@250/wrn28_2/fixmatch/mixup/mce",
        "cifar10@250/wrn28_2/fixmatch/mixup/dm_ce",
        "cifar10@250/wrn28_2/mixmatch/mixup/mce",
        "cifar10@250/wrn28_2/mixmatch/mixup/dm_ce",
    ]
    assert {cell.cell_id.split("/")[0] for cell in cells} == {
        "cifar10@250",
        "cifar10@4000",
        "cifar100@400",
    }
    assert summary(spec())["algorithms"] == ["labelled_only", "fixmatch", "mixmatch"]


def test_a_supervised_grid_keeps_its_ids():
    plain = spec_from_dict(
        {
            "name": "plain",
            "grid": {
                "dataset": ["cifar100"],
                "backbone": ["resnet18_cifar"],
                "method": ["mixup"],
                "loss": ["mce"],
            },
        }
    )
    [cell] = expand(plain)
    assert (cell.cell_id, cell.algorithm, cell.labels) == (
        "cifar100/resnet18_cifar/mixup/mce",
        "supervised",
        None,
    )


def test_grid_labels_take_over_from_the_data_settings_label_fraction():
    sweep = spec(data={"cifar10": {"label_fraction": 0.5}, "cifar100": {"label_fraction": 0.5}})
    by_id = {cell.cell_id: cell for cell in expand(sweep)}
    cell = by_id["cifar10@4000/wrn28_2/fixmatch/mixup/dm_ce"]
    config = train_config(sweep, cell, 0)
    assert config.data.label_fraction == 4000
    assert config.algorithm == "fixmatch"
    assert config.epochs_to_train() == config.semi_supervised.intervals()


def test_semi_supervised_cells_default_to_the_hosts_alpha_and_eta_0_1():
    by_id = {cell.cell_id: cell for cell in expand(spec())}
    assert by_id["cifar10@250/wrn28_2/fixmatch/mixup/mce"].hyperparameters == {"alpha": 1.0}
    assert by_id["cifar10@250/wrn28_2/fixmatch/mixup/dm_ce"].hyperparameters == {
        "alpha": 1.0,
        "eta": 0.1,
    }
    assert by_id["cifar10@250/wrn28_2/mixmatch/mixup/dm_ce"].hyperparameters == {
        "alpha": 0.5,
        "eta": 0.1,
    }


def test_overrides_and_exclusions_match_algorithms_and_labels():
    sweep = spec(
        exclude=[*SSL["exclude"], {"labels": 250, "algorithm": "mixmatch"}],
        overrides=[{"match": {"labels": [4000], "loss": "dm_ce"}, "set": {"eta": 0.5}}],
    )
    ids = {cell.cell_id: cell for cell in expand(sweep)}
    assert "cifar10@250/wrn28_2/mixmatch/mixup/mce" not in ids
    assert "cifar10@4000/wrn28_2/mixmatch/mixup/mce" in ids
    assert ids["cifar10@4000/wrn28_2/fixmatch/mixup/dm_ce"].hyperparameters["eta"] == 0.5
    assert ids["cifar10@250/wrn28_2/fixmatch/mixup/dm_ce"].hyperparameters["eta"] == 0.1


def test_the_paper_settings_are_comparable_and_shorter_runs_are_not():
    assert all(comparable(spec(), cell) for cell in expand(spec()))
    short = spec(semi_supervised={"steps": 1000, "eval_every": 100})
    assert not any(comparable(short, cell) for cell in expand(short))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"exclude": SSL["exclude"][:3]},
            "cell cifar10@250/wrn28_2/labelled_only/mixup/mce: algorithm 'labelled_only' does "
            "not use mixing.method 'mixup'",
        ),
        ({"labels": {"cifar10": [60_000]}}, "more than the 50,000 images to train on"),
        ({"labels": {"cifar10": [2.5]}}, "must be a fraction in (0, 1] or a whole count > 1"),
        ({"labels": {"cifar10": [250, 250]}}, "values must be unique; repeated: 250"),
        ({"labels": {"svhn": [250]}}, "unknown data set 'svhn'"),
        ({"algorithm": ["fixmatch", "vat"]}, "unknown algorithm 'vat'; allowed: supervised, "),
        (
            {"exclude": [*SSL["exclude"], {"labels": 1000}]},
            "exclude.4.labels.0: 1000 is not in grid.labels (250, 400, 4000)",
        ),
        ({"epochs": 5}, "counts steps: set semi_supervised.steps and eval_every, not epochs"),
        (
            {"labels": {"cifar10": [250], "tiny_imagenet": [0.1]}},
            "grid.labels.tiny_imagenet: not in",
        ),
        (
            {"algorithm": ["supervised"], "semi_supervised": {"steps": 10}, "exclude": []},
            "semi_supervised: has no effect: no cell trains with a semi-supervised algorithm",
        ),
    ],
)
def test_what_makes_no_sense_is_refused(changes, expected):
    assert expected in refusal(**changes)


def test_a_record_keeps_its_algorithm_and_labels_and_older_records_read_back():
    record = TrialRecord(
        trial_id="t",
        name="n",
        cell="cifar10@4000/wrn28_2/fixmatch/mixup/dm_ce",
        dataset="cifar10",
        backbone="wrn28_2",
        method="mixup",
        loss="dm_ce",
        seed=0,
        status=TrialState.SUCCEEDED,
        algorithm="fixmatch",
        labels=4000,
        metrics={"top1_ema_best": 95.1},
    )
    row = record.to_row()
    assert (row["algorithm"], row["labels"]) == ("fixmatch", 4000)
    assert TrialRecord.from_row(row) == record
    old = {k: v for k, v in row.items() if k not in ("algorithm", "labels")}
    assert TrialRecord.from_row(old).algorithm is None
    assert TrialRecord.from_row(old).metrics == {"top1_ema_best": 95.1}


def test_a_semi_supervised_sweep_ranks_its_trials_by_the_emas_best_top1():
    assert ranking(spec()) == ("top1_ema_best", "max")


def test_the_plan_counts_a_semi_supervised_interval_by_its_steps_and_views():
    by_cell = {w.cell: w for w in workloads(spec())}
    fixmatch = by_cell["cifar10@250/wrn28_2/fixmatch/vanilla/ce"]
    # 5000 steps of 64 labelled images and 7 x 2 views of unlabelled ones; 210 intervals.
    assert (fixmatch.images_per_epoch, fixmatch.epochs) == (5000 * 64 * (1 + 7 * 2), 210)
    mixmatch = by_cell["cifar10@250/wrn28_2/mixmatch/mixup/mce"]
    assert mixmatch.images_per_epoch == 5000 * 64 * (1 + 1 * 2)
    alone = by_cell["cifar10@250/wrn28_2/labelled_only/vanilla/ce"]
    assert alone.images_per_epoch == 5000 * 64
