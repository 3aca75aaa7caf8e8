"""Per-sample transforms of the recipes, run on one PIL image in a loader worker.

The per-sample path (:mod:`trainers.data.loader`) decodes each image at its own size and
applies these in ``DataLoader`` worker processes; the batch then only needs normalising (and
random erasing) on the device, :meth:`trainers.augment.TrainAugment.finish`. Built from timm's
and torchvision's transforms, so they are the recipes' own:

* training, ``random_resized_crop`` (Table 10 "RRC", "H. flip", and RandAugment 9/0.5 for DeiT,
  6/0.5 for RSB A3): timm's ``transforms_imagenet_train``: RandomResizedCrop with scale
  (0.08, 1) and ratio (3/4, 4/3) from the whole original image, bilinear, a flip with
  probability 0.5, RandAugment where the recipe asks for it, no colour jitter;
* training, ``random_crop`` (Sec. 4.1's CIFAR and Tiny-ImageNet recipes, and the per-sample
  strong augmentations of later recipes): torchvision's ``RandomCrop`` with 4 px of padding
  (``recipe.crop_padding_mode``: zeros or reflected), the flip, then RandAugment where asked;
* evaluation (Table 10: crop ratio 0.875, 0.95 for RSB A3): timm's ``transforms_imagenet_eval``:
  the shorter side resized to ``floor(image_size / crop_pct)`` (bilinear, antialiased), then the
  central ``image_size`` square.

All give uint8 (3, image_size, image_size) tensors. The random ones draw from Python's
``random``, NumPy's and torch's global generators; :func:`seeded` runs them with those seeded from
:func:`sample_seed` (seed, epoch, position), so a sample's augmentation depends on nothing else:
not on the worker that made it, nor on how many workers there are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import MaybePILToTensor
from timm.data.transforms_factory import transforms_imagenet_eval, transforms_imagenet_train
from torch import Tensor
from torchvision import transforms  # type: ignore[import-untyped]

from trainers.augment import CROP_PADDING, RRC_RATIO, RRC_SCALE
from trainers.recipes import Recipe

SampleTransform = Callable[[Image.Image], Tensor]

# Resampling of the crops: torchvision's default, which OpenMixup's pipelines (the paper's
# configurations) keep.
INTERPOLATION = "bilinear"


def sample_seed(seed: int, epoch: int, position: int, stream: int = 0) -> int:
    """A 64-bit seed for one sample: a hash of (seed, epoch, position in the epoch, stream).

    NumPy's ``SeedSequence`` mixes the words, so neighbouring positions (and seeds) get
    unrelated streams. ``stream`` tells apart draws of the same sample (0: its transform).
    """
    words = np.random.SeedSequence([seed, epoch, position, stream]).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python ``random``, NumPy and torch's CPU generator seeded by ``seed``, restored after.

    Restoring matters on the in-process path (0 loader workers), where the training thread's
    own global streams must not move.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # The CPU generator only: torch.manual_seed would also reseed every CUDA device, whose
        # streams (dropout, drop path) belong to the training thread.
        torch.default_generator.manual_seed(seed)
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def _randaugment_params(image_size: int, mean: Sequence[float]) -> dict[str, object]:
    # The hyperparameters timm's own training transforms give RandAugment.
    return {
        "translate_const": int(image_size * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in mean),
    }


def train_sample_transform(recipe: Recipe, image_size: int, mean: Sequence[float]) -> Callable:
    """The recipe's per-sample training transform: PIL image in, uint8 (3, S, S) out."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1; got {image_size}")
    if recipe.train_crop == "random_resized_crop":
        return transforms_imagenet_train(
            image_size,
            scale=RRC_SCALE,
            ratio=RRC_RATIO,
            hflip=0.5,
            color_jitter=None,  # type: ignore[arg-type]  # timm's code takes None: no jitter
            auto_augment=recipe.randaugment,
            interpolation=INTERPOLATION,
            mean=tuple(mean),
            use_prefetcher=True,  # uint8 out: normalisation happens on the device
        )
    steps: list[Callable] = [
        transforms.RandomCrop(
            image_size, padding=CROP_PADDING, padding_mode=recipe.crop_padding_mode
        ),
        transforms.RandomHorizontalFlip(),
    ]
    if recipe.randaugment is not None:
        params = _randaugment_params(image_size, mean)
        steps.append(rand_augment_transform(recipe.randaugment, params))
    return transforms.Compose([*steps, MaybePILToTensor()])


def eval_sample_transform(image_size: int, crop_pct: float) -> Callable:
    """Table 10's test-time view: shorter side to ``floor(size / crop_pct)``, centre crop."""
    if image_size < 1 or not 0 < crop_pct <= 1:
        raise ValueError(
            f"need image_size >= 1 and crop_pct in (0, 1]; got {image_size}, {crop_pct}"
        )
    return transforms_imagenet_eval(
        image_size, crop_pct=crop_pct, interpolation=INTERPOLATION, use_prefetcher=True
    )
