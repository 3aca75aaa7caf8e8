"""Training throughput of the loop's per-batch path against a bare PyTorch loop, side by side.

    python bench/throughput.py [--rounds 5] [--threads 2] [--system-malloc] [--device cuda]
        [--loss dm_ce] [--backbone resnet18_cifar] [--no-data]

1. Per-batch path: ``trainers.loop.train_step`` (augmentation on the device, mixing, the DM loss,
   backward, SGD step, loss bookkeeping) on uint8 images already in memory, against a bare loop
   over the same batches already normalised (same model and optimiser, plain cross-entropy, no
   augmentation, no mixing). Interleaved rounds; evaluation is not timed. CIFAR setting: 32 px,
   100 classes, batch 100, with ``smallnet`` and ``resnet18_cifar``. Target (issue 3): >= 0.95.
2. Data path alone, images/s: Parquet shards to augmented batches, and JPEG folders to augmented
   batches (opening, that is decoding, included), on the CIFAR-10 JPEGs of the shared data
   folder when it is there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# `python bench/<name>.py` puts only bench/ on sys.path; tests.support lives in the repo root.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from _timing import devices, median_seconds, setup
from rich.console import Console
from rich.table import Table

from tests.support.real_data import cifar10_archive, unpack_cifar10_jpg
from trainers.augment import TrainAugment, mean_std
from trainers.backbones import build_backbone
from trainers.config import TrainConfig
from trainers.data import open_dataset, write_parquet_shards
from trainers.loop import build_trial, train_step
from trainers.recipes import get_recipe

BATCH = 100


def trial_config(backbone: str, device: torch.device, loss: str = "dm_ce") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "data": {
                "name": "synthetic",
                "num_classes": 100,
                "image_size": 32,
                "synthetic_images": {"train": 4 * BATCH, "test": BATCH},
            },
            "backbone": {"name": backbone},
            "mixing": {"method": "cutmix", "alpha": 0.2},
            "loss": {"name": loss, **({"eta": 0.1} if loss == "dm_ce" else {})},
            "recipe": "cifar",
            "batch_size": BATCH,
            "device": device.type,
        }
    )


def step_throughput(
    backbone: str, device: torch.device, steps: int, rounds: int, loss: str = "dm_ce"
) -> tuple:
    trial = build_trial(trial_config(backbone, device, loss))
    train = trial.train_set
    batches = [torch.arange(i * BATCH, (i + 1) * BATCH) for i in range(4)]
    uint8 = [(train.read(b), train.labels[b]) for b in batches]

    # The bare loop: its own copy of the same network, normalised float batches on the device.
    bare_model = build_backbone(backbone, 100, 32).to(device)
    bare_model.load_state_dict(trial.model.state_dict())
    bare_model.train()
    bare_optimizer = torch.optim.SGD(bare_model.parameters(), lr=0.01, momentum=0.9)
    mean = torch.tensor(trial.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(trial.std, device=device).view(1, 3, 1, 1)
    ready = [((x.to(device).float() / 255 - mean) / std, y.to(device)) for x, y in uint8]
    trial.train_model.train()

    def ours():
        for i in range(steps):
            images, labels = uint8[i % len(uint8)]
            train_step(trial, images, labels)

    def bare():
        for i in range(steps):
            images, labels = ready[i % len(ready)]
            bare_optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(bare_model(images), labels).backward()
            bare_optimizer.step()

    times = median_seconds({"ours": ours, "bare": bare}, device, rounds=rounds, calls_per_round=1)
    per_second = {name: steps * BATCH / seconds for name, seconds in times.items()}
    return per_second["ours"], per_second["bare"]


def data_throughput(cifar_root: Path, workdir: Path) -> dict[str, float]:
    """Images/s from files to augmented batches, opening included."""
    recipe = get_recipe("cifar")
    augment = TrainAugment(recipe, 32, *mean_std("cifar10"))
    generator = torch.Generator().manual_seed(0)
    results = {}

    def drain(source) -> None:
        for start in range(0, len(source), BATCH):
            augment(source.read(torch.arange(start, min(start + BATCH, len(source)))), generator)

    started = time.perf_counter()
    jpeg = open_dataset("cifar10", "train", source="imagefolder", root=cifar_root)
    drain(jpeg)
    results["JPEG folder -> augmented batches"] = len(jpeg) / (time.perf_counter() - started)

    parquet_root = workdir / "parquet"
    write_parquet_shards(jpeg, parquet_root, split="train", images_per_shard=10_000)
    started = time.perf_counter()
    shards = open_dataset("cifar10", "train", source="parquet", root=parquet_root)
    drain(shards)
    results["Parquet shards (raw) -> augmented batches"] = len(shards) / (
        time.perf_counter() - started
    )
    return results


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loss",
        action="append",
        choices=("dm_ce", "mce"),
        help="the loss of the per-batch path; repeat to compare (default: dm_ce)",
    )
    parser.add_argument(
        "--backbone",
        action="append",
        choices=("smallnet", "resnet18_cifar"),
        help="repeat for several (default: both)",
    )
    parser.add_argument("--no-data", action="store_true", help="skip the data-path measurement")


def main() -> None:
    args = setup(
        "Training throughput, CIFAR setting", __doc__.split("\n")[0], rounds=5, options=_options
    )
    steps = 16
    console = Console()
    for device in devices(args.device):
        table = Table(title=f"{device.type}: per-batch path vs a bare PyTorch loop, batch {BATCH}")
        for column in ("backbone", "loss", "ours img/s", "bare img/s", "ratio", "target 0.95"):
            table.add_column(column, justify="right")
        for backbone in args.backbone or ("smallnet", "resnet18_cifar"):
            rounds = args.rounds if backbone == "smallnet" else max(2, args.rounds // 2)
            for loss in args.loss or ("dm_ce",):
                ours, bare = step_throughput(backbone, device, steps, rounds, loss)
                ratio = ours / bare
                verdict = "[green]ok[/]" if ratio >= 0.95 else "[red]under[/]"
                table.add_row(backbone, loss, f"{ours:.0f}", f"{bare:.0f}", f"{ratio:.3f}", verdict)
        console.print(table)

    if args.no_data:
        return
    archive = cifar10_archive()
    if not archive.is_file():
        console.print(f"data path: skipped, {archive} is not there")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cifar_root = unpack_cifar10_jpg(Path(tmp))
        table = Table(title="data path alone, 50,000 CIFAR-10 train images, CPU")
        table.add_column("path")
        table.add_column("images/s", justify="right")
        for name, rate in data_throughput(cifar_root, Path(tmp)).items():
            table.add_row(name, f"{rate:.0f}")
        console.print(table)


if __name__ == "__main__":
    main()
