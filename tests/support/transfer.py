"""Transfer trials on synthetic images, from smallnet weights written to a temporary file."""

from __future__ import annotations

from pathlib import Path

import torch

from trainers.backbones import SmallNet
from trainers.config import TrainConfig

SOURCE_CLASSES = 7  # the "pretrained" head Co-Tuning keeps
TARGET_CLASSES = 3


def write_weights(folder: Path, seed: int = 7) -> Path:
    """A smallnet state dict with a 7-class head (the source task), saved under ``folder``."""
    torch.manual_seed(seed)
    path = folder / "smallnet7.pt"
    torch.save(SmallNet(SOURCE_CLASSES).state_dict(), path)
    return path


def transfer_trial(
    weights: Path, algorithm: str = "fine_tuning", mixing=None, loss=None, **changes
) -> TrainConfig:
    """A transfer trial of smallnet on 120 synthetic 16 px images of 3 classes, 30 labelled
    (the 90 others the unlabelled rest); 6 steps of 8 labelled images in 3 intervals."""
    settings = {
        "data": {
            "name": "synthetic",
            "num_classes": TARGET_CLASSES,
            "image_size": 16,
            "synthetic_images": {"train": 120, "test": 30},
            "label_fraction": 30,
        },
        "backbone": {"name": "smallnet", "weights": str(weights)},
        "algorithm": algorithm,
        "recipe": "transfer",
        "batch_size": 8,
        "mixing": mixing or {"method": "vanilla"},
        "loss": loss or {"name": "ce"},
        "semi_supervised": {"steps": 6, "eval_every": 2},
        **changes,
    }
    return TrainConfig.model_validate(settings)
