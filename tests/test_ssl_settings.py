"""Semi-supervised settings: the recipe against TorchSSL's, the schedule, and what is refused."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainers.config import TrainConfig
from trainers.optim import build_optimizer, build_scheduler
from trainers.recipes import get_recipe


def trial(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data": {"name": "cifar10", "label_fraction": 4000},
        "backbone": {"name": "wrn28_2"},
        "mixing": {"method": "mixup", "alpha": 1.0},
        "loss": {"name": "dm_ce", "eta": 0.1},
        "algorithm": "fixmatch",
        "recipe": "ssl",
    }
    raw.update(changes)
    return raw


def refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        TrainConfig.model_validate(raw)
    return str(caught.value)


def test_the_ssl_recipe_is_torchssls_fixmatch_cifar10_config():
    # TorchSSL config/fixmatch/fixmatch_cifar10_4000_0.yaml and train_utils.get_optimizer.
    recipe = get_recipe("ssl")
    assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.nesterov) == (
        "sgd",
        0.03,
        0.9,
        True,
    )
    assert (recipe.weight_decay, recipe.batch_size, recipe.ema_decay) == (5e-4, 64, 0.999)
    assert recipe.schedule == "ssl_cosine" and not recipe.bias_norm_decay


def test_nesterov_sgd_leaves_biases_and_norms_without_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    optimizer = build_optimizer(model, get_recipe("ssl"), 64)
    decays = {
        g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups
    }
    # Decayed: the conv's 4*3*3*3 and the linear's 2*36 weights; not: 4 + 4 + 4 + 2 others.
    assert decays == {5e-4: 108 + 72, 0.0: 14}
    assert all(g["nesterov"] for g in optimizer.param_groups)


def test_the_ssl_cosine_is_fixmatchs_seven_sixteenths():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.03)
    scheduler = build_scheduler(optimizer, get_recipe("ssl"), 1000, 1)
    factor = scheduler.lr_lambdas[0]
    for step in (0, 250, 500, 1000):
        assert factor(step) == pytest.approx(math.cos(7 * math.pi * step / (16 * 1000)))
    assert factor(1000) == pytest.approx(0.19509, abs=1e-5)


def test_a_semi_supervised_trial_counts_evaluation_intervals_and_torchssls_ratio():
    config = TrainConfig.model_validate(
        trial(semi_supervised={"steps": 10_001, "eval_every": 5000})
    )
    assert config.epochs_to_train() == 3  # 5000, 5000, then the last 1
    assert config.unlabelled_ratio() == 7
    assert TrainConfig.model_validate(trial(algorithm="mixmatch")).unlabelled_ratio() == 1
    assert (
        TrainConfig.model_validate(
            trial(
                algorithm="labelled_only",
                mixing={"method": "vanilla"},
                loss={"name": "ce"},
                semi_supervised={"unlabelled_ratio": 3},
            )
        ).unlabelled_ratio()
        == 0
    )
    assert TrainConfig.model_validate(trial()).epochs_to_train() == math.ceil(2**20 / 5000)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"mixing": {"method": "cutmix", "alpha": 1.0}, "algorithm": "mixmatch"},
            "algorithm 'mixmatch' does not use mixing.method 'cutmix'; allowed with it: mixup",
        ),
        (
            {"algorithm": "remixmatch"},
            "algorithm 'remixmatch' with mixing.method 'mixup' does not use loss 'dm_ce'; "
            "allowed: mce",
        ),
        (
            {"mixing": {"method": "puzzlemix", "alpha": 1.0}},
            "algorithm 'fixmatch' does not use mixing.method 'puzzlemix'",
        ),
        (
            {"data": {"name": "cifar10"}},
            "algorithm 'fixmatch' with mixing.method 'mixup' learns from unlabelled images, and "
            "data.label_fraction",
        ),
        (
            {"data": {"name": "cifar10", "label_fraction": 1}},
            "algorithm 'fixmatch' with mixing.method 'mixup' learns from unlabelled images, and "
            "data.label_fraction",
        ),
        (
            {"data": {"name": "cifar10", "label_fraction": 60_000}},
            "keeps 60000 labels, more than the 50,000 images to train on",
        ),
        (
            {"data": {"name": "cifar10", "subset": 500, "label_fraction": 1000}},
            "more than the 500 images to train on (data.subset)",
        ),
        ({"epochs": 3}, "algorithm 'fixmatch' counts steps: set semi_supervised.steps"),
        ({"recipe_overrides": {"amp": True}}, "algorithm 'fixmatch' trains in float32"),
        ({"algorithm": "meanteacher"}, "unknown algorithm 'meanteacher'; allowed: supervised, "),
    ],
)
def test_what_makes_no_sense_is_refused_naming_both_fields(changes, expected):
    assert expected in refusal(trial(**changes))


def test_a_warm_up_in_epochs_and_a_recipe_without_ema_are_refused():
    assert "warmup_epochs 2 is in epochs" in refusal(trial(recipe_overrides={"warmup_epochs": 2}))
    # A step schedule's milestones are fractions of the run's steps: allowed.
    TrainConfig.model_validate(trial(recipe_overrides={"schedule": "step", "lr_milestones": [0.5]}))
    assert "evaluates an EMA of the weights; recipe 'cifar' keeps none" in refusal(
        trial(recipe="cifar")
    )


def test_nesterov_belongs_to_sgd():
    with pytest.raises(ValueError, match="nesterov and bias_norm_decay are sgd settings"):
        get_recipe("deit", {"nesterov": True})
