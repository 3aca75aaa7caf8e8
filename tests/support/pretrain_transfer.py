"""Pretraining on five CIFAR-10 classes and fine-tuning on the other five, sized for two CPU cores.

The setting of ``tests/test_transfer_real.py`` and ``bench/transfer_gain.py`` (which measured
it over three seeds): both go through the one training loop (``trainers.loop.run``) with
trials as a spec would write them, and the source model's weights pass through a plain weights
file, as ``make tl-pretrain`` writes one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig
from trainers.export import checkpoint_weights, write_weights
from trainers.loop import run
from trainers.weights import read_state_dict

# Each side holds vehicles and animals, so that what the source model learns (wheels, wings,
# fur, backgrounds of sky, road and grass) is of use to the target; the first five of CIFAR-10's
# class order against the last five, as search_spaces/tl_quick.yaml splits them.
SOURCE_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
TARGET_CLASSES = ["dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class TransferSetting:
    """How much of each side is trained: images, epochs, steps and batch sizes."""

    source_images: int = 10_000  # class-balanced: 2,000 per source class
    source_epochs: int = 6
    source_batch: int = 64
    target_images: int = 500  # of which label_fraction keeps 15 %: 15 per class
    label_fraction: float = 0.15
    steps: int = 200
    target_batch: int = 32
    test_images: int = 1000  # class-balanced: 200 per class, both sides
    lr: float = 0.2  # at the ssl recipe's reference batch 64 (halved for a batch of 32)
    algorithm: str = "fine_tuning"

    def with_changes(self, **changes: Any) -> TransferSetting:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def source_trial(root: Path, setting: TransferSetting, seed: int) -> TrainConfig:
    """Supervised training of smallnet on the source classes (the CIFAR recipe, shortened)."""
    return TrainConfig.model_validate(
        {
            "data": {
                "name": "cifar10",
                "source": "imagefolder",
                "root": str(root),
                "classes": SOURCE_CLASSES,
                "subset": setting.source_images,
                "test_subset": setting.test_images,
                "loader_workers": 0,
            },
            "backbone": {"name": "smallnet"},
            "mixing": {"method": "vanilla"},
            "loss": {"name": "ce"},
            "recipe": "cifar",
            "epochs": setting.source_epochs,
            "batch_size": setting.source_batch,
            "seed": seed,
        }
    )


def target_trial(
    root: Path, setting: TransferSetting, seed: int, weights: Path | None
) -> TrainConfig:
    """Fine-tuning on the target classes with a fraction of their labels, from ``weights``.

    The same trial from random weights when ``weights`` is None: nothing else differs.
    """
    return TrainConfig.model_validate(
        {
            "data": {
                "name": "cifar10",
                "source": "imagefolder",
                "root": str(root),
                "classes": TARGET_CLASSES,
                "subset": setting.target_images,
                "label_fraction": setting.label_fraction,
                "test_subset": setting.test_images,
                "loader_workers": 0,
            },
            "backbone": {
                "name": "smallnet",
                "weights": None if weights is None else str(weights),
            },
            "mixing": {"method": "vanilla"},
            "loss": {"name": "ce"},
            "algorithm": setting.algorithm,
            "recipe": "ssl",
            "recipe_overrides": {"lr": setting.lr},
            "batch_size": setting.target_batch,
            "semi_supervised": {"steps": setting.steps, "eval_every": setting.steps},
            "seed": seed,
        }
    )


def pretrain(root: Path, folder: Path, setting: TransferSetting, seed: int) -> tuple[Path, float]:
    """Train the source model; its weights file (5-class head kept) and its source top-1."""
    weights = folder / "smallnet_source.pt"
    final: dict[str, float] = {}

    def keep_last(metrics: dict[str, float], checkpoint: str | None) -> None:
        final.update(metrics)
        if checkpoint is not None:  # the last epoch always writes one
            write_weights(checkpoint_weights(checkpoint), weights)

    run(source_trial(root, setting, seed), keep_last)
    return weights, final["val_top1"]


def without_head(weights: Path, out: Path) -> Path:
    """A copy of a smallnet weights file without its classifier (``head.*``).

    Fine-tuning starts from the source model's features and a fresh head, as from ImageNet
    weights (whose 1,000-class head never fits): here the source's 5-class head would fit the
    5 target classes, and ``load_weights`` would keep it, mapping dogs to the source's cats.
    """
    body = {k: v for k, v in read_state_dict(weights).items() if not k.startswith("head.")}
    return write_weights(body, out)


def fine_tune(root: Path, setting: TransferSetting, seed: int, weights: Path | None) -> float:
    """The target top-1 (%) after fine-tuning from ``weights`` (None: random weights)."""
    final = run(target_trial(root, setting, seed, weights), lambda metrics, checkpoint: None)
    return final["val_top1"]
