"""Training on real images: the CIFAR-10 JPEGs of the shared data folder must be learnt."""

from __future__ import annotations

import pytest

from trainers.config import TrainConfig
from trainers.loop import run


@pytest.mark.parametrize("loss", [{"name": "mce"}, {"name": "dm_ce", "eta": 0.1}])
def test_three_epochs_of_smallnet_with_mixup_learn_cifar10(cifar10_jpg, loss):
    trial = TrainConfig.model_validate(
        {
            "data": {
                "name": "cifar10",
                "source": "imagefolder",
                "root": str(cifar10_jpg),
                "subset": 5000,  # class-balanced: 500 per class
                "test_subset": 1000,
            },
            "backbone": {"name": "smallnet"},
            "mixing": {"method": "mixup", "alpha": 1.0},
            "loss": loss,
            "recipe": "cifar",  # SGD, momentum 0.9, cosine; random crop + flip
            "epochs": 3,
            "batch_size": 50,  # the recipe's lr 0.1 at batch 100 scales to 0.05
            "seed": 0,
        }
    )
    history = []
    final = run(trial, lambda metrics, checkpoint: history.append(metrics))
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[-1]["lr"] < 0.05  # cosine decay from the scaled lr
    assert final["val_top1"] >= 35.0, history  # chance is 10%
    # The fixed mixed batch holds pairs of different classes, and the model finds one of them
    # far more often than chance (2 classes of 10).
    assert final["mixed_top1"] > 30.0, history
