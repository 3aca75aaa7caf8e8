"""What every image source gives the training loop, and the in-memory source.

A source holds N images of one split, their int64 labels (-1 marks an image whose label was
dropped by :func:`~trainers.data.sampling.label_fraction`) and the class names. Two ways to get
pixels: ``read`` gives a batch of uint8 squares of one size (CIFAR-sized data: augmented on the
training device), ``open_image`` one image as stored, at its own size (decoded and augmented per
sample in loader workers, :mod:`trainers.data.loader`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# The splits a data set may have; each source says which of them it supports.
SPLITS = ("train", "val", "test")

# File name endings an ImageFolder or a published layout may use, compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

IndexLike = Tensor | Sequence[int] | np.ndarray


@runtime_checkable
class ImageSource(Protocol):
    """The images of one split: class names, labels, and ``read`` for a batch of them."""

    @property
    def classes(self) -> list[str]:
        """Class names; a label is an index into this list."""
        ...

    @property
    def labels(self) -> Tensor:
        """int64 labels (N,), -1 for an image without a label."""
        ...

    @property
    def image_size(self) -> int:
        """Height and width of every image ``read`` returns."""
        ...

    def __len__(self) -> int: ...

    def read(self, indices: Tensor) -> Tensor:
        """uint8 images (len(indices), 3, image_size, image_size), in the order asked for."""
        ...

    def open_image(self, index: int) -> Image.Image:
        """Image ``index`` as stored (an original photo keeps its size), RGB."""
        ...


def to_pil(pixels: Tensor) -> Image.Image:
    """A uint8 (3, H, W) image as a PIL RGB image, what timm's and torchvision's transforms take."""
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


def as_index(indices: IndexLike, length: int) -> Tensor:
    """``indices`` as a 1-D int64 tensor, every entry checked against ``length``.

    The check is one vectorised comparison; it turns a silent wrap-around of negative indices
    (or a late crash inside a shard reader) into an error that names the bad index.
    """
    # On the CPU: the check below would otherwise sync with a GPU, and sources index CPU data.
    index = torch.as_tensor(indices).to("cpu", torch.long).reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= length):
        bad = index[(index < 0) | (index >= length)][0].item()
        raise IndexError(f"image index {bad} is out of range for a source of {length} images")
    return index


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, C, H, W), int64 labels (N,) and the class names, all in memory.

    It is an :class:`ImageSource`: ``read`` is one ``index_select`` on the images tensor.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]

    @property
    def image_size(self) -> int:
        """Height (and width) of the images."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, indices: IndexLike) -> Tensor:
        """The images at ``indices``, in that order."""
        index = as_index(indices, len(self))
        return self.images.index_select(0, index.to(self.images.device))

    def open_image(self, index: int) -> Image.Image:
        """Image ``index`` (all images of an ImageSet are stored at one size)."""
        return to_pil(self.images[int(as_index([index], len(self))[0])].cpu())


class SourceView:
    """Some images of another source, with their own labels, without copying any pixels.

    ``keep_classes``, ``subset`` and ``label_fraction`` return this for sources that do not
    hold their images in memory (lazy ImageFolder, Parquet shards): the images stay where they
    are and ``read`` maps the indices onto the underlying source.
    """

    def __init__(
        self,
        base: ImageSource,
        indices: Tensor,
        labels: Tensor,
        classes: Sequence[str] | None = None,
    ) -> None:
        if indices.shape != labels.shape:
            raise ValueError(f"indices {tuple(indices.shape)} and labels {tuple(labels.shape)}")
        self.base = base
        self.indices = indices.to(torch.long)
        self.labels = labels.to(torch.long)
        # A view of some classes names its own (labels index into them); any other, the base's.
        self.classes = list(base.classes if classes is None else classes)

    @property
    def image_size(self) -> int:
        """Height and width of the images of the underlying source."""
        return self.base.image_size

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def read(self, indices: IndexLike) -> Tensor:
        """The images at ``indices`` of this view, in that order."""
        return self.base.read(self.indices[as_index(indices, len(self))])

    def open_image(self, index: int) -> Image.Image:
        """Image ``index`` of this view, from the underlying source."""
        return self.base.open_image(int(self.indices[as_index([index], len(self))[0]]))

    def __repr__(self) -> str:
        return f"SourceView({len(self)} of {len(self.base)} images of {self.base!r})"
