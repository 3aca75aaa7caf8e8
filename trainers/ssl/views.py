"""The weak and strong views of the semi-supervised algorithms (FixMatch, Sohn et al., 2020).

* weak: a horizontal flip (probability 0.5) and a random 32 px crop of the image padded by 4 px
  (12.5 % of the side) with reflected borders: TorchSSL's ``RandomHorizontalFlip`` and
  ``RandomCrop(32, padding=4, padding_mode="reflect")``, batched on the device
  (:func:`trainers.augment.random_crop_flip`). For photo data sets (recipes with
  ``train_crop: random_resized_crop``, e.g. the transfer recipe) the weak view is instead
  RandomResizedCrop(image_size, scale=recipe.rrc_scale) and a flip, Self-Tuning's
  ``TransformTrain`` without its RandAugment (github.com/thuml/Self-Tuning ``src/utils``), cut
  on the device from the stored square the source reads (:func:`trainers.augment.
  random_resized_crop_flip`; Self-Tuning resizes the photo to 256 px first, the sources here
  keep squares of ``image_size``, so the crop is of that square).
* strong: FixMatch's RandAugment variant first, on the image as stored, then the weak view
  (TorchSSL inserts ``RandAugment(3, 5)`` at the head of the weak transform,
  ``datasets/ssl_dataset.py``). The variant (FixMatch's appendix, "RandAugment with random
  magnitude"; TorchSSL's ``datasets/augmentation/randaugment.py``): 3 operations drawn with
  replacement from the 14 below, each at a magnitude uniform in its range, then Cutout of a
  square of side uniform in [0, 0.5] of the image, centred uniformly (clipped at the border),
  filled with grey (125, 123, 114).

The strong view runs per image on the CPU (PIL). Its draws come from one ``random.Random``
seeded from the step's generator, never from the process-wide RNGs, so a seed reproduces it and
resuming a run replays it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import Tensor

from trainers.augment import RRC_SCALE, normalize, random_crop_flip, random_resized_crop_flip

# The magnitude ranges of FixMatch's RandAugment (TorchSSL's augment_list). Translations are
# fractions of the image's side; shears are affine coefficients; rotations degrees.
Operation = Callable[[Image.Image, float], Image.Image]


def _affine(coefficients: tuple[float, ...]) -> Operation:
    def apply(image: Image.Image, _: float) -> Image.Image:
        return image.transform(image.size, Image.Transform.AFFINE, coefficients)

    return apply


def _shear_x(image: Image.Image, v: float) -> Image.Image:
    return _affine((1, v, 0, 0, 1, 0))(image, v)


def _shear_y(image: Image.Image, v: float) -> Image.Image:
    return _affine((1, 0, 0, v, 1, 0))(image, v)


def _translate_x(image: Image.Image, v: float) -> Image.Image:
    return _affine((1, 0, v * image.size[0], 0, 1, 0))(image, v)


def _translate_y(image: Image.Image, v: float) -> Image.Image:
    return _affine((1, 0, 0, 0, 1, v * image.size[1]))(image, v)


OPERATIONS: tuple[tuple[str, Operation, float, float], ...] = (
    ("auto_contrast", lambda image, _: ImageOps.autocontrast(image), 0, 1),
    ("brightness", lambda image, v: ImageEnhance.Brightness(image).enhance(v), 0.05, 0.95),
    ("color", lambda image, v: ImageEnhance.Color(image).enhance(v), 0.05, 0.95),
    ("contrast", lambda image, v: ImageEnhance.Contrast(image).enhance(v), 0.05, 0.95),
    ("equalize", lambda image, _: ImageOps.equalize(image), 0, 1),
    ("identity", lambda image, _: image, 0, 1),
    ("posterize", lambda image, v: ImageOps.posterize(image, max(1, int(v))), 4, 8),
    ("rotate", lambda image, v: image.rotate(v), -30, 30),
    ("sharpness", lambda image, v: ImageEnhance.Sharpness(image).enhance(v), 0.05, 0.95),
    ("shear_x", _shear_x, -0.3, 0.3),
    ("shear_y", _shear_y, -0.3, 0.3),
    ("solarize", lambda image, v: ImageOps.solarize(image, int(v)), 0, 256),
    ("translate_x", _translate_x, -0.3, 0.3),
    ("translate_y", _translate_y, -0.3, 0.3),
)
OPERATIONS_PER_IMAGE = 3
CUTOUT_MAX_SIDE = 0.5  # of the image's side
CUTOUT_FILL = (125, 123, 114)
SHIFT = 0.125  # of the image's side: the weak view's padding (4 px at 32 px)


def cutout(image: Image.Image, side: float, rng: random.Random) -> Image.Image:
    """``image`` with a grey square of ``side`` (a fraction of its width) centred at random."""
    if side <= 0:
        return image
    width, height = image.size
    length = side * width
    x0 = int(max(0.0, rng.uniform(0, width) - length / 2))
    y0 = int(max(0.0, rng.uniform(0, height) - length / 2))
    box = (x0, y0, min(width, x0 + length), min(height, y0 + length))
    image = image.copy()
    ImageDraw.Draw(image).rectangle(box, CUTOUT_FILL)
    return image


def rand_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """FixMatch's RandAugment on one image: 3 random operations, then Cutout."""
    for _, operation, low, high in rng.choices(OPERATIONS, k=OPERATIONS_PER_IMAGE):
        image = operation(image, low + (high - low) * rng.random())
    return cutout(image, rng.random() * CUTOUT_MAX_SIDE, rng)


def strong_pixels(images: Tensor, seed: int) -> Tensor:
    """uint8 (N, 3, H, W) images through :func:`rand_augment`, one image after the other."""
    rng = random.Random(seed)
    pixels = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = np.stack([np.asarray(rand_augment(Image.fromarray(p), rng)) for p in pixels])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device)


class Views:
    """``views(images, kind, generator, host)``: the normalised weak or strong view of a batch."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop: str = "random_crop",
        rrc_scale: tuple[float, float] = RRC_SCALE,
    ) -> None:
        if crop not in ("random_crop", "random_resized_crop"):
            raise ValueError(f"crop must be random_crop or random_resized_crop; got {crop!r}")
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.crop = crop
        self.rrc_scale = rrc_scale

    def weak(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Flip and 12.5 % shift with reflected borders (or RandomResizedCrop), normalised."""
        if self.crop == "random_resized_crop":
            resized = random_resized_crop_flip(
                images, self.image_size, scale=self.rrc_scale, generator=generator
            )
            return normalize(resized, self.mean, self.std)
        crops = random_crop_flip(
            images,
            self.image_size,
            padding=round(SHIFT * self.image_size),
            padding_mode="reflect",
            generator=generator,
        ).float()
        return normalize(crops, self.mean, self.std)

    def strong(self, images: Tensor, generator: torch.Generator, host: torch.Generator) -> Tensor:
        """RandAugment and Cutout of the CPU ``images``, then the weak view on the device.

        The operations' seed comes from ``host``, a CPU generator: drawing it from the device's
        would wait for the device every step.
        """
        seed = int(torch.randint(2**62, (1,), generator=host))
        pixels = strong_pixels(images.cpu(), seed).to(generator.device, non_blocking=True)
        return self.weak(pixels, generator)

    def __call__(
        self, images: Tensor, kind: str, generator: torch.Generator, host: torch.Generator
    ) -> Tensor:
        """The ``kind`` view ("weak", "strong") of CPU uint8 images, on the generator's device."""
        if kind == "weak":
            return self.weak(images.to(generator.device, non_blocking=True), generator)
        if kind == "strong":
            return self.strong(images, generator, host)
        raise ValueError(f"unknown view {kind!r}; allowed: weak, strong")
