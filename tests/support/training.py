"""Training runs of the loop on synthetic images, and a report callback that keeps what it gets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainers.config import TrainConfig
from trainers.loop import run

# What the loop reports each epoch besides the epoch itself (MLflow's metrics of a trial).
EPOCH_METRICS = (
    "train_loss",
    "val_top1",
    "val_top5",
    "mixed_top1",
    "mixed_top2",
    "lr",
    "epoch_time_s",
    "images_per_s",
)
SUMMARY_METRICS = ("top1_median_last10", "top1_best")  # reported with the last epoch


def synthetic_trial(**changes) -> TrainConfig:
    """A trial of the small CNN on 400 synthetic 16-pixel images of 5 classes: seconds on CPU."""
    trial = {
        "data": {
            "name": "synthetic",
            "num_classes": 5,
            "image_size": 16,
            "synthetic_images": {"train": 400, "test": 200},
        },
        "backbone": {"name": "smallnet"},
        "mixing": {"method": "cutmix", "alpha": 1.0},
        "loss": {"name": "dm_ce", "eta": 0.1},
        "recipe": "smoke",
        "epochs": 3,
        "batch_size": 32,
        "seed": 0,
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(trial.get(key), dict):
            trial[key] = {**trial[key], **value}
        else:
            trial[key] = value
    return TrainConfig.model_validate(trial)


# Each loss of the grid with the settings it takes: MCE, DM(CE), MBCE and DM(BCE).
EVERY_LOSS = [
    {"name": "mce"},
    {"name": "dm_ce", "eta": 1.0},
    {"name": "mbce"},
    {"name": "dm_bce", "xi": 0.8, "t": 1.0},
]


def cifar10_jpg_trial(root: Path, method: str, loss: dict) -> TrainConfig:
    """One epoch of smallnet on 40 of the shared CIFAR-10 JPEGs (two steps), CIFAR recipe."""
    return TrainConfig.model_validate(
        {
            "data": {
                "name": "cifar10",
                "source": "imagefolder",
                "root": str(root),
                "subset": 40,
                "test_subset": 20,
                "loader_workers": 0,
            },
            "backbone": {"name": "smallnet"},
            "mixing": {"method": method, "alpha": 2.0},
            "loss": loss,
            "recipe": "cifar",
            "epochs": 1,
            "batch_size": 20,
            "eval": {"mixed_batch": 20},
            "seed": 0,
        }
    )


class Recorder:
    """A report callback that keeps the metrics and copies every checkpoint it is handed."""

    def __init__(self, keep: Path | None = None, stop_after: int | None = None):
        self.metrics: list[dict] = []
        self.checkpoints: list[Path] = []
        self.keep, self.stop_after = keep, stop_after

    def __call__(self, metrics, checkpoint):
        self.metrics.append(dict(metrics))
        if checkpoint is not None:
            assert (Path(checkpoint) / "state.pt").is_file()
            if self.keep is not None:
                target = self.keep / f"epoch{metrics['epoch']}"
                shutil.copytree(checkpoint, target)
                self.checkpoints.append(target)
        if self.stop_after is not None and metrics["epoch"] == self.stop_after:
            raise KeyboardInterrupt(f"interrupted after epoch {metrics['epoch']}")


def whole_interrupted_resumed(
    trial: TrainConfig, folder: Path, stop_after: int
) -> tuple[Recorder, Recorder, Recorder]:
    """``trial`` run whole, interrupted after epoch ``stop_after``, and resumed: their recorders.

    The resumed run starts from the interrupted one's last checkpoint; all are kept in ``folder``.
    """
    whole = Recorder(keep=folder / "whole")
    run(trial, whole)
    interrupted = Recorder(keep=folder / "interrupted", stop_after=stop_after)
    with pytest.raises(KeyboardInterrupt):
        run(trial, interrupted)
    resumed = Recorder(keep=folder / "resumed")
    run(trial, resumed, resume_from=interrupted.checkpoints[-1])
    return whole, interrupted, resumed
