"""Batch augmentation: crops checked against independent per-sample loops, flips, boxes,
normalisation, evaluation crop, timm's random erasing and RandAugment, reproducibility."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainAugment,
    mean_std,
    normalize,
    random_crop_flip,
    random_resized_crop_boxes,
    random_resized_crop_flip,
    resized_crops,
)
from trainers.recipes import get_recipe


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def windows(image: torch.Tensor, size: int, padding: int) -> dict[tuple[int, int, bool], object]:
    """Every crop of the zero-padded image, with and without flip, built one at a time."""
    _, height, width = image.shape
    padded = torch.zeros(3, height + 2 * padding, width + 2 * padding, dtype=image.dtype)
    padded[:, padding : padding + height, padding : padding + width] = image
    found = {}
    for top in range(height + 2 * padding - size + 1):
        for left in range(width + 2 * padding - size + 1):
            crop = padded[:, top : top + size, left : left + size]
            found[(top, left, False)] = crop
            found[(top, left, True)] = torch.flip(crop, dims=[2])
    return found


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    batch = images(64)
    out = random_crop_flip(batch, 32, padding=4, generator=gen(1))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    offsets = set()
    for image, crop in zip(batch, out, strict=True):
        matches = [
            key for key, window in windows(image, 32, 4).items() if torch.equal(crop, window)
        ]
        assert len(matches) == 1
        offsets.add(matches[0][:2])
    assert {top for top, _ in offsets} == set(range(9))  # every shift in [-4, 4] occurs
    assert {left for _, left in offsets} == set(range(9))


def test_random_crop_to_a_smaller_size():
    batch = images(8, size=12)
    out = random_crop_flip(batch, 8, padding=1, generator=gen(2))
    for image, crop in zip(batch, out, strict=True):
        assert any(torch.equal(crop, w) for w in windows(image, 8, 1).values())


def test_random_crop_flips_half_of_the_time():
    # A horizontal ramp tells flipped crops (decreasing) from the others (increasing).
    ramp = torch.arange(16, dtype=torch.uint8).expand(2000, 3, 16, 16).contiguous()
    out = random_crop_flip(ramp, 16, padding=0, generator=gen(3))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_same_seed_same_batch_other_seed_other_batch():
    batch = images(16)
    for name in ("cifar", "imagenet_pytorch", "deit"):
        augment = TrainAugment(get_recipe(name), 32, CIFAR10_MEAN, CIFAR10_STD)
        assert torch.equal(augment(batch, gen(5)), augment(batch, gen(5)))
        assert not torch.equal(augment(batch, gen(5)), augment(batch, gen(6)))


def test_timm_steps_leave_the_global_rngs_alone():
    augment = TrainAugment(get_recipe("deit"), 32, CIFAR10_MEAN, CIFAR10_STD)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    augment(images(4), gen())
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_full_scale_square_crop_is_the_resized_image():
    batch = images(6)
    whole = random_resized_crop_boxes(6, 32, 32, generator=gen(), scale=(1, 1), ratio=(1, 1))
    assert whole.tolist() == [[0, 0, 32, 32]] * 6
    out = random_resized_crop_flip(batch, 32, generator=gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert out.dtype == torch.float32 and out.shape == (6, 3, 32, 32)
    for image, crop in zip(batch.float(), out, strict=True):
        assert torch.equal(crop, image) or torch.equal(crop, image.flip(2))
    resized = resized_crops(batch, whole, 20)
    expected = F.interpolate(batch.float(), size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, expected, atol=1e-3, rtol=0)


def test_resized_crop_reads_the_box():
    # An image whose pixel values name their column: the crop's columns must span the box.
    columns = torch.arange(40, dtype=torch.float32).expand(1, 3, 40, 40).contiguous()
    box = torch.tensor([[5, 10, 20, 20]])  # top, left, height, width
    out = resized_crops(columns, box, 20)
    torch.testing.assert_close(out[0, 0, 0], torch.arange(10, 30, dtype=torch.float32))
    flipped = resized_crops(columns, box, 20, flip=torch.tensor([True]))
    torch.testing.assert_close(flipped[0, 0, 0], torch.arange(29, 9, -1, dtype=torch.float32))


def test_random_resized_crop_boxes_follow_torchvision_rules():
    boxes = random_resized_crop_boxes(4000, 224, 160, generator=gen(7))
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (height > 0).all() and (width > 0).all()
    assert (top + height <= 224).all() and (left + width <= 160).all()
    area = (height * width).double() / (224 * 160)
    assert area.min() >= 0.08 * 0.95 and area.max() <= 1.0  # sides are rounded
    aspect = width.double() / height.double()
    assert aspect.min() >= 0.75 * 0.95 and aspect.max() <= 4 / 3 * 1.05
    assert area.max() > 0.9 and area.min() < 0.1  # the whole range is drawn
    assert len(set(top.tolist())) > 50 and len(set(left.tolist())) > 50


def test_random_resized_crop_falls_back_to_the_centre():
    # Ratio 2 never fits a square at full scale: torchvision's centre crop at ratio 2.
    boxes = random_resized_crop_boxes(3, 32, 32, generator=gen(), scale=(1, 1), ratio=(2, 2))
    assert boxes.tolist() == [[8, 0, 16, 32]] * 3


def test_random_resized_crop_agrees_with_a_per_sample_loop():
    # The same uniform draws, replayed through torchvision's loop one sample at a time.
    n, height, width, scale, ratio = 300, 50, 70, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = random_resized_crop_boxes(n, height, width, generator=gen(9), scale=scale, ratio=ratio)
    g = gen(9)
    draws = torch.rand(n, 10, 2, generator=g, dtype=torch.float64)
    position = torch.rand(n, 2, generator=g, dtype=torch.float64)
    for i in range(n):
        for k in range(10):
            target = height * width * (scale[0] + (scale[1] - scale[0]) * draws[i, k, 0].item())
            log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
            aspect = math.exp(log_lo + (log_hi - log_lo) * draws[i, k, 1].item())
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = math.floor(position[i, 0].item() * (height - h + 1))
                left = math.floor(position[i, 1].item() * (width - w + 1))
                assert boxes[i].tolist() == [top, left, h, w]
                break
        else:
            raise AssertionError("the loop expects a fitting candidate at these settings")


def test_normalisation_and_constants():
    assert mean_std("cifar10") == (CIFAR10_MEAN, CIFAR10_STD)
    assert mean_std("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert pytest.approx((0.485, 0.456, 0.406)) == IMAGENET_MEAN
    with pytest.raises(ValueError, match="known: cifar10"):
        mean_std("mnist")
    pixels = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1)
    out = normalize(pixels, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    torch.testing.assert_close(out.flatten(), torch.tensor([-2.0, 0.0, 0.5]))
    # Output of an identity augmentation: mean and std match what the constants say.
    batch = images(64)
    out = TrainAugment(get_recipe("cifar"), 32, *mean_std("synthetic"))(batch, gen())
    inner = out[:, :, 4:-4, 4:-4]  # away from the zero padding
    assert inner.mean().item() == pytest.approx((127.5 / 255 - 0.5) / 0.25, abs=0.05)
    assert inner.std().item() == pytest.approx((255 / math.sqrt(12)) / 255 / 0.25, rel=0.05)


def test_eval_transform_centre_crops_by_the_test_crop_ratio():
    batch = images(2, size=64)
    cifar = EvalTransform(get_recipe("cifar"), 64, CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(cifar(batch), normalize(batch.float(), CIFAR10_MEAN, CIFAR10_STD))
    # test crop 0.875 of 64 px: the centre 56 px, resized back to 64.
    deit = EvalTransform(get_recipe("deit"), 64, IMAGENET_MEAN, IMAGENET_STD)
    centre = batch[:, :, 4:60, 4:60].float()
    expected = F.interpolate(centre, size=(64, 64), mode="bilinear", antialias=True)
    torch.testing.assert_close(deit(batch), normalize(expected, IMAGENET_MEAN, IMAGENET_STD))
    # Stored at image_size / test_crop (73 px ~ 64 / 0.875): a plain centre crop.
    big = images(2, size=73)
    side = round(73 * 0.875)
    assert side == 64
    out = deit(big)
    expected = normalize(big[:, :, 4:68, 4:68].float(), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(out, expected)


def test_random_erasing_with_p1_changes_one_rectangle():
    batch = images(8)
    plain = TrainAugment(get_recipe("cifar"), 32, CIFAR10_MEAN, CIFAR10_STD)(batch, gen(4))
    recipe = get_recipe("cifar", {"random_erasing": 1.0})
    erased = TrainAugment(recipe, 32, CIFAR10_MEAN, CIFAR10_STD)(batch, gen(4))
    changed = (plain != erased).any(1)  # (N, H, W)
    for mask in changed:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) > 0
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and box.sum() == mask.sum()  # exactly one filled rectangle
        assert box.numel() < 32 * 32 / 3 + 32  # at most about a third of the image


@pytest.mark.parametrize("name", ["deit", "rsb_a3"])
def test_randaugment_recipes_run(name):
    batch = images(6, size=48)
    augment = TrainAugment(get_recipe(name), 32, IMAGENET_MEAN, IMAGENET_STD)
    assert augment.randaugment is not None
    out = augment(batch, gen(8))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    no_ra = TrainAugment(
        get_recipe(name, {"randaugment": None, "random_erasing": 0.0}),
        32,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert not torch.equal(out, no_ra(batch, gen(8)))  # same crops, then RandAugment


def test_bad_inputs_are_named():
    augment = TrainAugment(get_recipe("cifar"), 32, CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match="uint8"):
        augment(images(2).float(), gen())
    with pytest.raises(ValueError, match=r"\(N >= 1, 3, H, W\)"):
        augment(images(2)[:, :1], gen())
    with pytest.raises(ValueError, match="generator is on"):
        augment(torch.empty(2, 3, 32, 32, dtype=torch.uint8, device="meta"), gen())
