"""Batch augmentation on the batch's device: uint8 images (N, 3, H, W) in, normalised float32 out.

The training augmentations of the paper's recipes (Sec. 4.1 and Table 10), batched:

* ``random_crop``: pad 4 pixels (zeros, or reflected: ``recipe.crop_padding_mode``), a random
  ``image_size`` crop per sample and a horizontal flip with probability 0.5 (Sec. 4.1:
  ``RandomFlip`` and ``RandomCrop`` with 4 px padding, the CIFAR-100 recipe). One gather with
  per-sample index grids.
* ``random_resized_crop``: torchvision's RandomResizedCrop rules (scale ``recipe.rrc_scale``,
  default (0.08, 1), ratio (3/4, 4/3), 10 attempts, then a centre crop) drawn for the whole
  batch at once, plus the flip, resampled with one bilinear ``F.grid_sample`` over per-sample
  affine grids (Table 10: "RRC", "H. flip"; also the "standard augmentations" of the
  fine-grained recipe, and Tiny-ImageNet's). Unlike PIL it does not antialias when it shrinks a
  large crop.
* RandAugment (Table 10: 9/0.5 for DeiT, 6/0.5 for RSB A3): timm's ``rand_augment_transform``,
  which works on PIL images, so the one per-sample CPU step: it runs only for recipes that ask.
  The training loop runs such recipes on the per-sample path instead (crops and RandAugment in
  loader workers, :mod:`trainers.transforms`), and then only :meth:`TrainAugment.finish` here.
* random erasing (Table 10: 0.25 for DeiT): timm's ``RandomErasing`` in 'pixel' mode, on the
  normalised batch, as timm applies it after normalisation.

Randomness comes from the ``torch.Generator`` passed in, which must live on the batch's
device: the crops and flips draw from it directly. timm's RandAugment and RandomErasing draw from
the process-wide Python ``random``, NumPy and torch RNGs instead; for them one seed is drawn from
the generator (one host synchronisation per batch, only for recipes that use them) and those
global RNGs run seeded with it, their previous states restored afterwards. So a generator seed
reproduces the whole batch and the global RNGs are left as they were; this is not thread-safe
against other threads drawing from the global RNGs at the same moment.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch import Tensor

from trainers.recipes import Recipe

# Per-channel statistics of the training images, in [0, 1] pixel units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)
# trainers.data.synthetic images are blends of templates in [0, 1] with noise: about mid-grey.
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)

# Tiny-ImageNet, CUB-200, Aircraft and Cars are normalised with ImageNet's statistics, as OpenMixup
# (the paper's code base) does.
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "tiny_imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cub200": (IMAGENET_MEAN, IMAGENET_STD),
    "aircraft": (IMAGENET_MEAN, IMAGENET_STD),
    "cars": (IMAGENET_MEAN, IMAGENET_STD),
    "synthetic": (SYNTHETIC_MEAN, SYNTHETIC_STD),
}

CROP_PADDING = 4  # Sec. 4.1: RandomCrop with 4 pixels of padding
RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults, used by all Table 10 recipes
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10


def mean_std(dataset_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation (mean, std) of a data set, per channel, in [0, 1] pixel units."""
    if dataset_name not in MEAN_STD:
        raise ValueError(f"no mean/std for data set {dataset_name!r}; known: {', '.join(MEAN_STD)}")
    return MEAN_STD[dataset_name]


def normalize(
    images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> Tensor:
    """float32 ``(images / 255 - mean) / std`` per channel, for images in [0, 255]."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t


class _Normalizer:
    """``normalize`` with the constants kept on each device met, copied there once."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"need 3-channel mean and positive std; got {mean}, {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, images: Tensor) -> Tensor:
        if images.device not in self._on:
            self._on[images.device] = (
                torch.tensor(self.mean, device=images.device),
                torch.tensor(self.std, device=images.device),
            )
        return normalize(images, *self._on[images.device])


def random_crop_flip(
    images: Tensor,
    size: int,
    *,
    padding: int = CROP_PADDING,
    padding_mode: str = "constant",
    generator: torch.Generator,
) -> Tensor:
    """Pad by ``padding``, crop a random ``size`` x ``size`` window per sample, flip half.

    ``padding_mode`` fills the border: ``constant`` (zeros) or ``reflect`` (``recipe.
    crop_padding_mode``; OpenMixup's CIFAR pipeline reflects).

    Each sample's offsets are uniform over every window of the padded image, and its horizontal
    flip has probability 0.5; the dtype is kept (uint8 stays uint8).
    """
    n, _, height, width = images.shape
    if height + 2 * padding < size or width + 2 * padding < size:
        raise ValueError(f"a {size} px crop does not fit {height}x{width} images padded {padding}")
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding), mode=padding_mode)
    top = torch.randint(height + 2 * padding - size + 1, (n,), generator=generator, device=device)
    left = torch.randint(width + 2 * padding - size + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    span = torch.arange(size, device=device)
    rows = top[:, None] + span  # (N, size)
    # A flipped crop reads its window's columns right to left.
    cols = left[:, None] + torch.where(flip[:, None], span.flip(0), span)
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indices around the channel slice put the indexed dims first: (N, size, size, C).
    crops = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
    attempts: int = RRC_ATTEMPTS,
) -> Tensor:
    """Per-sample RandomResizedCrop boxes ``(top, left, box_height, box_width)``, int64 (N, 4).

    torchvision's rules, for all samples at once: each sample draws ``attempts`` candidates
    (area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``, sides rounded)
    and keeps the first that fits the image, at a uniform position; a sample with no fitting
    candidate takes the central crop of the image clipped to ``ratio``. Draws happen on the
    generator's device.
    """
    device = generator.device
    area = height * width
    draws = torch.rand(n, attempts, 2, generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    box_w = torch.sqrt(target_area * aspect).round()
    box_h = torch.sqrt(target_area / aspect).round()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    # argmax returns the first maximal index: the first candidate that fits (0 if none does).
    first = fits.to(torch.int32).argmax(1, keepdim=True)
    found = fits.any(1)
    box_w = box_w.gather(1, first).squeeze(1)
    box_h = box_h.gather(1, first).squeeze(1)
    position = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.floor(position[:, 0] * (height - box_h + 1))
    left = torch.floor(position[:, 1] * (width - box_w + 1))
    # torchvision's fallback: the whole image, clipped to the allowed aspect ratios, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    boxes = torch.stack(
        [
            torch.where(found, top, float((height - fallback_h) // 2)),
            torch.where(found, left, float((width - fallback_w) // 2)),
            torch.where(found, box_h, float(fallback_h)),
            torch.where(found, box_w, float(fallback_w)),
        ],
        dim=1,
    )
    return boxes.to(torch.int64)


def resized_crops(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Each sample's box resized to ``size`` x ``size`` (bilinear), mirrored where ``flip``.

    One ``F.grid_sample`` (align_corners=False, border padding) over per-sample affine grids
    that map the output's edges onto the box's edges; float32 out, in the input's value range.
    """
    n, channels, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    # In grid_sample's normalised coordinates the image spans [-1, 1] edge to edge.
    scale_x = box_w / width
    scale_y = box_h / height
    if flip is not None:
        scale_x = torch.where(flip, -scale_x, scale_x)  # mirror about the box's centre
    theta = torch.zeros(n, 2, 3, dtype=torch.float32, device=images.device)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [n, channels, size, size], align_corners=False)
    return F.grid_sample(
        images.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def random_resized_crop_flip(
    images: Tensor,
    size: int,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> Tensor:
    """RandomResizedCrop to ``size`` plus a horizontal flip with probability 0.5, batched.

    float32 out, values in [0, 255] for uint8 input.
    """
    n, _, height, width = images.shape
    boxes = random_resized_crop_boxes(
        n, height, width, generator=generator, scale=scale, ratio=ratio
    )
    flip = torch.rand(n, generator=generator, device=images.device) < 0.5
    return resized_crops(images, boxes, size, flip)


def _check_images(images: Tensor, generator: torch.Generator | None = None) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else images
        raise ValueError(f"images must be a uint8 tensor (N, 3, H, W); got {got}")
    if images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"images must be (N >= 1, 3, H, W); got {tuple(images.shape)}")
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the batch is on {images.device}; "
            f"pass torch.Generator(device={str(images.device)!r})"
        )


@contextmanager
def _seeded_global_rngs(seed: int, device: torch.device) -> Iterator[None]:
    """Run with Python ``random``, NumPy and torch (CPU and ``device``) RNGs seeded by ``seed``.

    Their previous states come back afterwards, so timm's transforms draw reproducibly from the
    caller's generator without disturbing anyone else's random streams.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    cuda = device.type == "cuda"
    index = 0
    if cuda:
        index = device.index if device.index is not None else torch.cuda.current_device()
    # fork_rng restores the torch CPU state, and that of the batch's CUDA device if it has one.
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TrainAugment:
    """The recipe's training augmentation for a batch: ``augment(images_uint8, generator)``.

    Crop and flip (``recipe.train_crop``), RandAugment (``recipe.randaugment``, per sample on
    the CPU), normalisation by ``mean``/``std``, then random erasing (``recipe.random_erasing``),
    in timm's order. Returns float32 (N, 3, image_size, image_size) on the batch's device.
    """

    def __init__(
        self, recipe: Recipe, image_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1; got {image_size}")
        self.recipe = recipe
        self.image_size = image_size
        self.normalize = _Normalizer(mean, std)
        self.randaugment = None
        if recipe.randaugment is not None:
            # The hyperparameters timm's own training transforms give RandAugment.
            hparams = {
                "translate_const": int(image_size * 0.45),
                "img_mean": tuple(min(255, round(255 * m)) for m in self.normalize.mean),
            }
            self.randaugment = rand_augment_transform(recipe.randaugment, hparams)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment one batch of uint8 images; ``generator`` lives on the batch's device."""
        _check_images(images, generator)
        if self.recipe.train_crop == "random_crop":
            out = random_crop_flip(
                images,
                self.image_size,
                padding_mode=self.recipe.crop_padding_mode,
                generator=generator,
            ).float()
        else:
            out = random_resized_crop_flip(
                images, self.image_size, scale=self.recipe.rrc_scale, generator=generator
            )
        erasing = self.recipe.random_erasing > 0
        if self.randaugment is None and not erasing:
            return self.normalize(out)
        seed = int(torch.randint(2**62, (1,), generator=generator, device=images.device).item())
        with _seeded_global_rngs(seed, images.device):
            if self.randaugment is not None:
                out = self._randaugment(out)
            out = self.normalize(out)
            if erasing:
                RandomErasing(
                    probability=self.recipe.random_erasing, mode="pixel", device=out.device
                )(out)  # in place, per sample
        return out

    def finish(self, images: Tensor, seed: int) -> Tensor:
        """Normalise a batch that loader workers already cropped, then random erasing.

        timm's order after its per-sample transforms (its prefetcher normalises and erases on
        the device). ``seed`` comes from the host (the loader's per-batch seed), so erasing
        draws reproducibly without a device synchronisation.
        """
        _check_images(images)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"finish expects crops of {self.image_size} px; got {tuple(images.shape[-2:])}"
            )
        out = self.normalize(images)
        if self.recipe.random_erasing > 0:
            with _seeded_global_rngs(seed, images.device):
                RandomErasing(
                    probability=self.recipe.random_erasing, mode="pixel", device=out.device
                )(out)  # in place, per sample
        return out

    def _randaugment(self, images: Tensor) -> Tensor:
        # The one per-sample CPU step: timm's RandAugment operates on PIL images.
        assert self.randaugment is not None
        pixels = images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        augmented = np.stack(
            [np.asarray(self.randaugment(Image.fromarray(pixel))) for pixel in pixels]
        )
        return torch.from_numpy(augmented).to(images.device).permute(0, 3, 1, 2).float()


class EvalTransform:
    """The recipe's evaluation transform: centre crop of ``test_crop``, resize, normalise.

    timm and torchvision resize the shorter side to ``image_size / test_crop`` and centre-crop
    ``image_size``. That is the centre square of side ``test_crop * min(H, W)`` of the stored
    image, resized to ``image_size`` (bilinear, antialiased): what this does, so that stored
    images already at ``image_size`` get the same view (Table 10: ratio 0.875 or 0.95). With
    ``test_crop == 1`` on square images of ``image_size`` (CIFAR) it only normalises.

    ``cropped=True``: the images arrive already resized and centre-cropped from the originals
    (:func:`trainers.transforms.eval_sample_transform`, per image on the CPU): only normalise.
    """

    def __init__(
        self,
        recipe: Recipe,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        cropped: bool = False,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1; got {image_size}")
        self.test_crop = 1.0 if cropped else recipe.test_crop
        self.image_size = image_size
        self.normalize = _Normalizer(mean, std)

    def __call__(self, images: Tensor) -> Tensor:
        """float32 (N, 3, image_size, image_size), normalised, on the batch's device."""
        _check_images(images)
        height, width = images.shape[-2:]
        side = max(1, round(min(height, width) * self.test_crop))
        # torchvision's centre_crop offsets.
        top = round((height - side) / 2.0)
        left = round((width - side) / 2.0)
        out = images[:, :, top : top + side, left : left + side].float()
        if side != self.image_size:
            out = F.interpolate(
                out,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.normalize(out)
