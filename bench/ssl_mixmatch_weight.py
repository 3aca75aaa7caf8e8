"""MixMatch and MixMatch+DM on a short run, at TorchSSL's unsupervised weight and a smaller one.

    python bench/ssl_mixmatch_weight.py [--steps 600] [--weights 100 10]

Why: in ``search_spaces/ssl_quick.yaml`` (3,000 steps) both MixMatch rows collapsed to chance.
TorchSSL ramps MixMatch's unsupervised weight (100) in over 40 % of the run, which in a short run
is a few hundred steps. This runs the labelled-only baseline and both MixMatch rows on synthetic
images (smallnet, 2,000 train / 500 test images of 5 classes, 100 labelled, batch 32, mu 1, an
evaluation every 100 steps) at each weight, and prints each run's top-1 per evaluation. The
weight is not a setting of the grid yet, so this swaps the class the trial builds for one with
the weight bound (``functools.partial``); everything else is the trial's own.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import trainers.ssl.algorithms as algorithms
from trainers.config import TrainConfig
from trainers.loop import run
from trainers.ssl.mixmatch import MixMatch

ROWS = {
    "labelled only": ("labelled_only", {"method": "vanilla"}, {"name": "ce"}),
    "MixMatch": ("mixmatch", {"method": "mixup", "alpha": 0.5}, {"name": "mce"}),
    "MixMatch+DM": ("mixmatch", {"method": "mixup", "alpha": 0.5}, {"name": "dm_ce", "eta": 0.1}),
}


def trial(algorithm: str, mixing: dict, loss: dict, steps: int) -> TrainConfig:
    """The row's trial on synthetic images."""
    return TrainConfig.model_validate(
        {
            "data": {
                "name": "synthetic",
                "num_classes": 5,
                "image_size": 16,
                "synthetic_images": {"train": 2000, "test": 500},
                "label_fraction": 100,
            },
            "backbone": {"name": "smallnet"},
            "algorithm": algorithm,
            "recipe": "ssl",
            "batch_size": 32,
            "mixing": mixing,
            "loss": loss,
            "semi_supervised": {"steps": steps, "eval_every": 100, "unlabelled_ratio": 1},
        }
    )


def _keep_top1(kept: list[float], metrics: dict[str, float], _checkpoint: str | None) -> None:
    kept.append(metrics["val_top1"])


def main() -> None:
    """Print the top-1 of every evaluation of each row at each weight."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--weights", type=float, nargs="+", default=[100.0, 10.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for weight in args.weights:
        algorithms.MixMatch = functools.partial(MixMatch, lambda_u=weight)  # type: ignore[misc]
        for name, (algorithm, mixing, loss) in ROWS.items():
            if algorithm == "labelled_only" and weight != args.weights[0]:
                continue  # the baseline has no unsupervised weight
            top1: list[float] = []
            record = functools.partial(
                lambda kept, metrics, _: kept.append(metrics["val_top1"]), top1
            )
            run(trial(algorithm, mixing, loss, args.steps), record)
            print(f"weight {weight:g}  {name:14s} " + " ".join(f"{v:5.1f}" for v in top1))


if __name__ == "__main__":
    main()
