"""The per-sample image pipeline at 224 px: images/s to augmented batches, side by side.

    python bench/data_pipeline.py [--images 1000] [--rounds 3] [--recipe imagenet_pytorch]
        [--size 500x375]

Photo-sized JPEGs are made from the CIFAR-10 JPEGs of the shared data folder (upscaled, bicubic,
to ``--size``, alternating landscape and portrait, quality 90: about the pixels of an ImageNet
photo) and written once as an ImageFolder and once as Parquet shards of the original files
(``dmsweep data prepare``'s format). Each candidate then turns all of them into augmented 224 px
batches (decode, the recipe's per-sample transform: RandomResizedCrop from the whole original and
flip, plus RandAugment for ``--recipe deit``) with 1 and with 2 ``DataLoader`` worker processes.
Candidates run interleaved, one epoch per round (workers start with each epoch, as in training),
after one warm-up epoch; medians are compared. The ratios are the figures to read: absolute
images/s depend on the machine and on whatever else it runs (a second worker needs a free core).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# `python bench/<name>.py` puts only bench/ on sys.path; tests.support lives in the repo root.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch
from _timing import median_seconds, setup
from PIL import Image
from rich.console import Console
from rich.table import Table

from tests.support.real_data import unpack_cifar10_jpg
from trainers.augment import mean_std
from trainers.data import ImageSource, open_dataset, prepare
from trainers.data.imagefolder import list_imagefolder, parallel_fill
from trainers.data.loader import SampleLoader
from trainers.recipes import get_recipe
from trainers.transforms import train_sample_transform

SIZE = 224
BATCH = 64


def make_photos(cifar_root: Path, out: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` CIFAR-10 train JPEGs upscaled to ``size`` (every other one portrait)."""
    files, labels, classes = list_imagefolder(cifar_root, "train")
    # An even spread over the classes: every 50,000 / count-th file.
    step = max(1, len(files) // count)
    chosen = [(files[i], classes[int(labels[i])]) for i in range(0, len(files), step)][:count]
    for name in {cls for _, cls in chosen}:
        (out / "train" / name).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        path, cls = chosen[i]
        shape = size if i % 2 == 0 else size[::-1]
        with Image.open(path) as image:
            photo = image.convert("RGB").resize(shape, Image.Resampling.BICUBIC)
        photo.save(out / "train" / cls / f"{i:06d}.jpg", quality=90)

    parallel_fill(len(chosen), write, chunk=16)
    return out


def drain(loader: SampleLoader, count: int) -> None:
    """One epoch: every image once, in a fixed shuffled order."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    for batch in loader.epoch(0, order, BATCH):
        assert batch.images.shape[1:] == (3, SIZE, SIZE)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=1000, help="photos per epoch")
    parser.add_argument("--recipe", default="imagenet_pytorch", help="imagenet_pytorch, deit, ...")
    parser.add_argument("--size", default="500x375", help="photo size, WIDTHxHEIGHT")


def main() -> None:
    args = setup(
        "data_pipeline",
        __doc__ or "",
        rounds=3,
        options=_options,
    )
    width, height = (int(v) for v in args.size.split("x"))
    recipe = get_recipe(args.recipe)
    transform = train_sample_transform(recipe, SIZE, mean_std("imagenet")[0])
    with tempfile.TemporaryDirectory(prefix="dmsweep-bench-data-") as tmp:
        work = Path(tmp)
        cifar = unpack_cifar10_jpg(work)
        folder = make_photos(cifar, work / "photos", args.images, (width, height))
        shards = prepare("imagefolder", folder, work / "shards", "parquet")
        with warnings.catch_warnings():  # "10 classes; imagenet has 1000": known, and fine
            warnings.simplefilter("ignore", UserWarning)
            sources: dict[str, ImageSource] = {
                "ImageFolder": open_dataset("imagenet", "train", root=folder),
                "Parquet": open_dataset("imagenet", "train", source="parquet", root=shards),
            }
        count = len(sources["ImageFolder"])
        kilobytes = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / 1e3
        print(
            f"{count} JPEGs of {width}x{height} ({kilobytes / count:.0f} kB each) -> {SIZE} px, "
            f"recipe {args.recipe}, batches of {BATCH}"
        )
        loaders = {
            (name, workers): SampleLoader(source, transform, seed=0, workers=workers)
            for name, source in sources.items()
            for workers in (1, 2)
        }
        candidates = {
            f"{name}, {workers} worker(s)": (lambda loader=loader: drain(loader, count))
            for (name, workers), loader in loaders.items()
        }
        seconds = median_seconds(
            candidates, torch.device("cpu"), rounds=args.rounds, calls_per_round=1, warmup=1
        )
    rate = {name: count / s for name, s in seconds.items()}
    table = Table(title=f"images/s to augmented {SIZE} px batches (median of {args.rounds})")
    table.add_column("source")
    table.add_column("1 worker", justify="right")
    table.add_column("2 workers", justify="right")
    table.add_column("2 / 1", justify="right")
    for name in sources:
        one, two = rate[f"{name}, 1 worker(s)"], rate[f"{name}, 2 worker(s)"]
        table.add_row(name, f"{one:,.0f}", f"{two:,.0f}", f"{two / one:.2f}")
    ratio = [rate[f"Parquet, {w} worker(s)"] / rate[f"ImageFolder, {w} worker(s)"] for w in (1, 2)]
    table.add_row("Parquet / ImageFolder", f"{ratio[0]:.2f}", f"{ratio[1]:.2f}", "")
    Console().print(table)


if __name__ == "__main__":
    main()
