"""A learnable synthetic image classification data set, generated in-process.

Each class has a smooth random colour template; an image is its class template, shifted by a
few pixels, blended with another random template and pixel noise, so that classes overlap and
a model has something to learn (and mixing something to regularise). Deterministic given the
seed: the same arguments give the same images on every machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ImageSet lives in base.py now (it is the in-memory ImageSource); imported here so that
# ``from trainers.data.synthetic import ImageSet`` keeps working.
from trainers.data.base import SPLITS, ImageSet

__all__ = ["SPLITS", "ImageSet", "synthetic"]


def _smooth_templates(count: int, size: int, generator: torch.Generator) -> Tensor:
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def synthetic(
    num_images: int,
    *,
    split: str = "train",
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    noise: float = 0.25,
    distractor: float = 0.45,
    max_shift: int = 4,
) -> ImageSet:
    """``num_images`` images of one split, classes balanced (round robin), in shuffled order.

    ``seed`` fixes the classes (their templates); ``split`` picks an independent draw of images
    from them, so "train" and "val" of one seed are two samples of the same task.
    """
    if num_images < 1 or num_classes < 2 or image_size < 4:
        raise ValueError(
            "synthetic data needs num_images >= 1, num_classes >= 2 and image_size >= 4; got "
            f"{num_images}, {num_classes}, {image_size}"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    g = torch.Generator().manual_seed(seed)
    templates = _smooth_templates(num_classes, image_size + 2 * max_shift, g)
    distractors = _smooth_templates(64, image_size, g)
    g = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split) + 1_000_003)
    labels = torch.arange(num_images) % num_classes
    labels = labels[torch.randperm(num_images, generator=g)]
    shifts = torch.randint(0, 2 * max_shift + 1, (num_images, 2), generator=g)
    # Crop each image's window out of its (larger) class template: one gather, no loop.
    rows = shifts[:, 0, None] + torch.arange(image_size)
    cols = shifts[:, 1, None] + torch.arange(image_size)
    base = templates[labels][
        torch.arange(num_images)[:, None, None, None],
        torch.arange(3)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    other = distractors[torch.randint(0, 64, (num_images,), generator=g)]
    images = (1 - distractor) * base + distractor * other
    images = images + noise * torch.randn(images.shape, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, [f"class_{i}" for i in range(num_classes)])
