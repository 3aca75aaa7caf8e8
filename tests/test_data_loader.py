"""The per-sample path: originals kept, Table 10's crops from them in loader workers, seeded by
(seed, epoch, position) so that the worker count and a resume change nothing."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.support.training import synthetic_trial, whole_interrupted_resumed
from trainers.augment import IMAGENET_MEAN
from trainers.config import TrainConfig
from trainers.data import ImageFiles, ParquetShards, open_dataset, prepare
from trainers.data.loader import SampleLoader, in_memory
from trainers.data.synthetic import synthetic
from trainers.loop import build_trial, load_checkpoint
from trainers.recipes import get_recipe
from trainers.transforms import eval_sample_transform, seeded, train_sample_transform


def ramp(width: int, height: int) -> Image.Image:
    """Red grows with x, green with y: a crop's values say where in the original it lies."""
    x = np.linspace(0, 255, width).round().astype(np.uint8)
    y = np.linspace(0, 255, height).round().astype(np.uint8)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = x[None, :]
    pixels[..., 1] = y[:, None]
    return Image.fromarray(pixels)


def photo_folder(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """An ImageFolder of noisy JPEGs of the given sizes, two classes, train and test alike."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for i, (width, height) in enumerate(sizes):
            folder = root / split / f"class_{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def hand_eval_view(image: Image.Image, size: int, crop_pct: float) -> torch.Tensor:
    """Table 10's test view by hand: shorter side to floor(size / crop_pct), centre crop."""
    width, height = image.size
    short = math.floor(size / crop_pct)
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    resized = np.asarray(image.resize(new, Image.Resampling.BILINEAR))
    top = round((new[1] - size) / 2)
    left = round((new[0] - size) / 2)
    return torch.from_numpy(resized[top : top + size, left : left + size].transpose(2, 0, 1).copy())


@pytest.mark.parametrize(("recipe", "crop_pct"), [("deit", 0.875), ("rsb_a3", 0.95)])
def test_eval_view_is_the_shorter_side_resized_then_the_centre_crop(recipe, crop_pct):
    image = ramp(300, 200)
    assert get_recipe(recipe).test_crop == crop_pct
    out = eval_sample_transform(64, crop_pct)(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    assert torch.equal(out, hand_eval_view(image, 64, crop_pct))


def test_the_loop_evaluates_photos_on_the_view_of_their_originals(tmp_path):
    sizes = [(120, 80), (90, 140), (100, 100), (160, 96)]
    root = photo_folder(tmp_path / "cub", sizes)
    config = TrainConfig.model_validate(
        {
            "data": {"name": "cub200", "root": str(root), "image_size": 32, "loader_workers": 0},
            "backbone": {"name": "smallnet"},
            "mixing": {"method": "mixup", "alpha": 1.0},
            "loss": {"name": "mce"},
            "recipe": "imagenet_pytorch",
            "batch_size": 2,
        }
    )
    with pytest.warns(UserWarning, match="has 2 classes"):
        trial = build_trial(config)
    assert isinstance(trial.train_set, ImageFiles) and trial.loader is not None
    files = sorted((root / "test").rglob("*.jpg"), key=lambda p: (p.parent.name, p.name))
    expected = torch.stack([hand_eval_view(Image.open(f).convert("RGB"), 32, 0.875) for f in files])
    assert torch.equal(trial.test_set.read(torch.arange(4)), expected)
    assert trial.eval_transform.test_crop == 1.0  # cropped already: only normalised on the device


def test_random_resized_crops_come_from_the_whole_original():
    # A 4:1 photo: the centre square of old (x in 150..250 of 400) is a quarter of it.
    width, height = 400, 100
    transform = train_sample_transform(get_recipe("imagenet_pytorch"), 48, IMAGENET_MEAN)
    spans = []
    for i in range(300):
        with seeded(i):
            crop = transform(ramp(width, height)).double()
        x = crop[0] / 255 * (width - 1)
        y = crop[1] / 255 * (height - 1)
        spans.append((x.min().item(), x.max().item(), y.min().item(), y.max().item()))
    x_lo, x_hi, y_lo, y_hi = (torch.tensor(v) for v in zip(*spans, strict=True))
    assert x_lo.min() < 20 and x_hi.max() > 380  # both ends of the original are reached
    area = (x_hi - x_lo + 1) * (y_hi - y_lo + 1) / (width * height)
    # RandomResizedCrop's scale (0.08, 1) of the whole original's area; sides rounded, edges
    # blurred by the resize: a few percent of slack.
    assert area.min() > 0.08 * 0.8 and area.max() <= 1.0
    aspect = (x_hi - x_lo + 1) / (y_hi - y_lo + 1)
    assert aspect.min() > 0.75 * 0.85 and aspect.max() < 4 / 3 * 1.15


def _epoch(loader: SampleLoader, epoch: int, order: torch.Tensor) -> list[torch.Tensor]:
    return [batch.images for batch in loader.epoch(epoch, order, 4)]


def test_same_seed_epoch_and_position_give_the_same_crops_with_0_1_and_2_workers(tmp_path):
    sizes = [(70 + 9 * i, 50 + 7 * (i % 5)) for i in range(10)]
    files = open_dataset("imagenet", "train", root=photo_folder(tmp_path, sizes), image_size=24)
    assert isinstance(files, ImageFiles) and not in_memory(files)
    transform = train_sample_transform(get_recipe("deit"), 24, IMAGENET_MEAN)  # RRC + RandAugment
    order = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5])  # repeated images, as repeated aug. has
    by_workers = {}
    for workers in (0, 1, 2):
        loader = SampleLoader(files, transform, seed=7, workers=workers)
        by_workers[workers] = (_epoch(loader, 0, order), _epoch(loader, 1, order))
    first, second = by_workers[0]
    assert [len(b) for b in first] == [4, 4]  # the last batch of one image is dropped
    for workers in (1, 2):
        theirs = by_workers[workers]
        for ours, other in zip((*first, *second), (*theirs[0], *theirs[1]), strict=True):
            assert torch.equal(ours, other)
    assert not torch.equal(first[0], second[0])  # another epoch, other crops
    assert not torch.equal(first[0][1], first[0][3])  # one image twice, two crops
    other = SampleLoader(files, transform, seed=8, workers=0)
    assert not torch.equal(_epoch(other, 0, order)[0], first[0])


def padded_windows(image: torch.Tensor, size: int, padding: int, mode: str) -> list:
    """Every crop of the padded image, flipped or not, built one at a time."""
    padded = F.pad(image[None].float(), (padding,) * 4, mode=mode)[0].to(torch.uint8)
    found = []
    for top in range(padded.shape[1] - size + 1):
        for left in range(padded.shape[2] - size + 1):
            crop = padded[:, top : top + size, left : left + size]
            found += [crop, crop.flip(2)]
    return found


def test_cifar_in_memory_serves_the_per_sample_path_with_padded_crops():
    images = synthetic(12, num_classes=3, image_size=16, seed=0)
    assert in_memory(images)
    recipe = get_recipe("cifar")
    transform = train_sample_transform(recipe, 16, (0.5, 0.5, 0.5))
    loader = SampleLoader(images, transform, seed=0, workers=1)
    order = torch.arange(12)
    batches = list(loader.epoch(0, order, 6))
    crops = torch.cat([b.images for b in batches])
    assert torch.equal(torch.cat([b.labels for b in batches]), images.labels)
    for image, crop in zip(images.images, crops, strict=True):
        padded = padded_windows(image, 16, 4, recipe.crop_padding_mode)
        assert any(torch.equal(crop, w) for w in padded)  # a window of the padded image
    strong = get_recipe("cifar", {"randaugment": "rand-m9-mstd0.5-inc1"})
    augmented = SampleLoader(
        images, train_sample_transform(strong, 16, (0.5,) * 3), seed=0, workers=0
    )
    assert next(iter(augmented.epoch(0, order, 6))).images.shape == (6, 3, 16, 16)


def test_parquet_keeps_the_original_files(tmp_path):
    sizes = [(120, 80), (90, 140), (100, 100), (160, 96)]
    src = photo_folder(tmp_path / "src", sizes)
    out = prepare("imagefolder", src, tmp_path / "shards", "parquet")  # 224 px: originals
    with pytest.warns(UserWarning, match="has 2 classes"):
        shards = open_dataset("imagenet", "train", source="parquet", root=out)
        folder = open_dataset("imagenet", "train", root=src)
    assert isinstance(shards, ParquetShards) and shards.encoding == "original"
    assert shards.image_size == 224 and not in_memory(shards)
    for i in range(4):
        assert shards.encoded(i) == folder.files[i].read_bytes()  # byte for byte
        original = shards.open_image(i)
        assert original.size == Image.open(folder.files[i]).size
        assert np.array_equal(np.asarray(original), np.asarray(folder.open_image(i)))
    assert shards.shard_loads == []  # one image at a time reads its row group, not the shard
    assert torch.equal(shards.read(torch.arange(4)), folder.read(torch.arange(4)))


def test_a_run_on_the_worker_path_resumes_bitwise(tmp_path):
    trial = synthetic_trial(
        epochs=2,
        data={"loader_workers": 1, "synthetic_images": {"train": 160, "test": 64}},
        recipe_overrides={"randaugment": "rand-m6-mstd0.5-inc1", "random_erasing": 0.25},
    )
    assert build_trial(trial).loader is not None  # RandAugment: crops made in the worker
    torch.use_deterministic_algorithms(True)
    try:
        whole, _, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=1)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [m["epoch"] for m in resumed.metrics] == [2]
    for a, b in zip(whole.metrics[1:], resumed.metrics, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_top1"] == b["val_top1"]
    expected = load_checkpoint(whole.checkpoints[-1])["model"]
    got = load_checkpoint(resumed.checkpoints[-1])["model"]
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


class _MarkingTransform:
    """A transform that leaves a file per call: work done in a worker is seen from here."""

    def __init__(self, inner, folder: Path) -> None:
        self.inner, self.folder = inner, folder

    def __call__(self, image: Image.Image) -> torch.Tensor:
        (self.folder / f"{os.getpid()}-{time.monotonic_ns()}").touch()
        return self.inner(image)


def test_the_next_epoch_is_cropped_while_the_caller_evaluates_and_gives_the_same_batches(
    tmp_path,
):
    """``prefetch`` starts the workers at once (before any batch is asked for); the batches are
    those the epoch gives without it, and a prefetch for another epoch is not used."""
    images = synthetic(12, num_classes=3, image_size=16, seed=0)
    inner = train_sample_transform(get_recipe("cifar"), 16, (0.5, 0.5, 0.5))
    marks = tmp_path / "marks"
    marks.mkdir()
    loader = SampleLoader(images, _MarkingTransform(inner, marks), seed=3, workers=1)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    loader.prefetch(1, order, 4)
    deadline = time.monotonic() + 60
    while not any(marks.iterdir()):  # the worker crops while nothing is asked of it
        assert time.monotonic() < deadline, "the prefetched epoch never started"
        time.sleep(0.05)
    ahead = [b.images for b in loader.epoch(1, order, 4)]
    fresh = SampleLoader(images, inner, seed=3, workers=0)
    assert all(map(torch.equal, ahead, _epoch(fresh, 1, order)))
    loader.prefetch(2, order, 4)
    other = [b.images for b in loader.epoch(3, order, 4)]  # not what was prefetched
    assert all(map(torch.equal, other, _epoch(fresh, 3, order)))
    assert not torch.equal(other[0], ahead[0])
    loader.prefetch(4, order, 4)  # a trial that stops here: close ends the epoch's worker
    assert multiprocessing.active_children()
    loader.close()
    deadline = time.monotonic() + 60
    while multiprocessing.active_children():
        assert time.monotonic() < deadline, "the worker of an epoch started ahead lives on"
        time.sleep(0.05)
