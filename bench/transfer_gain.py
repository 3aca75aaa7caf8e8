"""What pretraining on five CIFAR-10 classes gains when fine-tuning on the other five.

The setting of ``tests/test_transfer_real.py`` (``tests/support/pretrain_transfer.py``), over
several seeds: smallnet trained on the source classes, then fine-tuned on the target classes
with 15 % of their labels, once from those weights (a fresh head) and once from random
weights, with identical settings. Prints each seed's top-1 of both arms and the gain; the
test's docstring quotes these figures. ``--lr``, ``--steps`` and ``--target-images`` take
several values: every combination is fine-tuned from the same source model.

    python bench/transfer_gain.py --root /tmp/cifar10-jpg --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.pretrain_transfer import (
    TransferSetting,
    fine_tune,
    pretrain,
    without_head,
)


def main() -> None:
    """Run both arms for each seed and setting, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the unpacked cifar10-jpg folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithm", default=TransferSetting.algorithm)
    parser.add_argument("--source-images", type=int, default=TransferSetting.source_images)
    parser.add_argument("--source-epochs", type=int, default=TransferSetting.source_epochs)
    parser.add_argument(
        "--target-images", type=int, nargs="+", default=[TransferSetting.target_images]
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[TransferSetting.steps])
    parser.add_argument("--lr", type=float, nargs="+", default=[TransferSetting.lr])
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the fresh head's warning, once per pretrained arm
    base = TransferSetting(
        source_images=args.source_images,
        source_epochs=args.source_epochs,
        algorithm=args.algorithm,
    )
    print(base)
    gains: dict[tuple[float, int, int], list[float]] = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            weights, source_top1 = pretrain(args.root, Path(folder), base, seed)
            body = without_head(weights, Path(folder) / "body.pt")
            print(
                f"seed {seed}: source top-1 {source_top1:.1f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            for lr, steps, images in itertools.product(args.lr, args.steps, args.target_images):
                setting = base.with_changes(lr=lr, steps=steps, target_images=images)
                started = time.perf_counter()
                pretrained = fine_tune(args.root, setting, seed, body)
                random = fine_tune(args.root, setting, seed, None)
                gains.setdefault((lr, steps, images), []).append(pretrained - random)
                print(
                    f"  lr {lr:g}, {steps} steps, {images} target images: pretrained "
                    f"{pretrained:.1f}, random {random:.1f}, gain {pretrained - random:+.1f} "
                    f"({time.perf_counter() - started:.0f} s for both)",
                    flush=True,
                )
    for (lr, steps, images), values in gains.items():
        print(
            f"lr {lr:g}, {steps} steps, {images} target images: gain mean "
            f"{sum(values) / len(values):+.1f}, min {min(values):+.1f}"
        )


if __name__ == "__main__":
    main()
