"""The per-sample path: images decoded and augmented one by one in ``DataLoader`` workers.

Photos of varying size (ImageNet, CUB-200, Aircraft, Cars: ``DatasetInfo.originals``) cannot be
batched before they are cropped, and timm's RandAugment works on one PIL image at a time. For
them, :class:`SampleLoader` runs a per-sample transform (:mod:`trainers.transforms`) in
``torch.utils.data.DataLoader`` worker processes (prefetching, pinned batches on CUDA); the
training thread only copies finished uint8 crops to the device. CIFAR-sized
data held in memory keeps the batched path (crops on the device, :mod:`trainers.augment`) unless
its recipe asks for a per-sample transform; the per-sample path serves it just as well.

Evaluation overlaps the next epoch's data: the loop asks for that epoch's batches
(:meth:`SampleLoader.prefetch`) before it evaluates, and the workers fill their queues meanwhile.

Reproducibility: a sample's transform is seeded with ``sample_seed(seed, epoch, position)``,
``position`` being its place in the epoch's order, so an epoch gives the same batches whatever the
number of workers (0 runs in-process) and a run resumed at an epoch boundary continues bitwise.
A position rather than the image index: repeated augmentation puts an image into an epoch
several times, and each copy must get its own crop.

:class:`EvalCrops` is the evaluation side: a source whose ``read`` gives the test-time view of
each original (shorter side resized, centre crop), decoded once and held in memory when it fits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from trainers.data.base import ImageSet, ImageSource, IndexLike, SourceView, as_index, to_pil
from trainers.data.imagefolder import IN_MEMORY_LIMIT_BYTES, parallel_fill
from trainers.data.parquet import ParquetShards
from trainers.transforms import sample_seed, seeded

# Batches each worker keeps ready ahead of the training thread (DataLoader's prefetch_factor).
PREFETCH_BATCHES = 2
# The per-batch draws of the device part of the augmentation (random erasing) use this stream
# of sample_seed; the per-sample transforms use stream 0.
BATCH_STREAM = 1
# Per-sample transforms of a sample, keyed (epoch, position in the epoch, image index).
SampleKey = tuple[int, int, int]


def default_loader_workers() -> int:
    """Loader worker processes when a trial sets none: the CPUs this process may use, less one.

    One CPU is left for the training thread; at least 1 worker, at most 8 (past that a GPU step
    is rarely waiting for data).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def in_memory(source: ImageSource) -> bool:
    """Whether ``source`` holds decoded pixels (an ImageSet, raw Parquet, or a view of one).

    Those are read a batch at a time and cropped on the device; anything else decodes per
    image: the per-sample path.
    """
    if isinstance(source, SourceView):
        return in_memory(source.base)
    if isinstance(source, ParquetShards):
        return source.encoding == "raw"
    return isinstance(source, ImageSet)


class _Samples(Dataset):
    """One transformed sample per key: what each worker process computes."""

    def __init__(self, source: ImageSource, transform: Callable, seed: int) -> None:
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: SampleKey) -> tuple[Tensor, int]:
        epoch, position, index = key
        image = self.source.open_image(index)
        with seeded(sample_seed(self.seed, epoch, position)):
            crop = self.transform(image)
        return crop, int(self.source.labels[index])


class _EpochBatches(Sampler[list[SampleKey]]):
    """The keys of each batch of the current epoch.

    The loader iterates it in the main process: the workers only ever see keys.
    """

    def __init__(self) -> None:
        self.epoch, self.order, self.batch_size = 0, torch.empty(0, dtype=torch.long), 2

    def set(self, epoch: int, order: Tensor, batch_size: int) -> None:
        self.epoch, self.order, self.batch_size = epoch, order, batch_size

    def starts(self) -> range:
        # A last batch of one image is dropped: batch norm cannot train on it.
        usable = len(self.order) if len(self.order) % self.batch_size != 1 else len(self.order) - 1
        return range(0, usable, self.batch_size)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        # The epoch is read now, when the DataLoader's iterator is made: an iterator started
        # ahead (prefetch) keeps its epoch whatever is set after it.
        return self._keys(self.epoch, self.order.tolist(), self.batch_size, self.starts())

    @staticmethod
    def _keys(
        epoch: int, index: list[int], batch_size: int, starts: range
    ) -> Iterator[list[SampleKey]]:
        for start in starts:
            end = min(start + batch_size, len(index))
            yield [(epoch, p, index[p]) for p in range(start, end)]

    def __len__(self) -> int:
        return len(self.starts())


@dataclass(frozen=True)
class LoadedBatch:
    """One batch of the per-sample path.

    Crops from the workers (uint8 (N, 3, S, S), pinned on CUDA), their labels, the seed of the
    batch's device-side draws and the batch's first position in the epoch.
    """

    images: Tensor
    labels: Tensor
    seed: int
    start: int


class SampleLoader:
    """Batches of ``source`` transformed per sample by ``transform`` in ``workers`` processes.

    ``seed`` keys every draw (with the epoch and the position); ``workers=0`` transforms in this
    process. One ``DataLoader`` serves every epoch.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], Tensor],
        *,
        seed: int,
        workers: int,
        pin_memory: bool = False,
    ) -> None:
        if workers < 0:
            raise ValueError(f"loader workers must be >= 0; got {workers}")
        self.seed, self.workers = seed, workers
        self._batches = _EpochBatches()
        self._ahead: tuple[tuple[int, int, Tensor], Iterator[LoadedBatch]] | None = None
        self._loader = DataLoader(
            _Samples(source, transform, seed),
            batch_sampler=self._batches,
            num_workers=workers,
            pin_memory=pin_memory,
            # Workers start with each epoch (ahead of it: prefetch) and end with it (a fork:
            # ~0.1 s, next to an epoch of photos). Persistent workers would outlive a run that
            # stops on an exception, and a second loader started beside live ones is about 10x
            # slower to its first batch.
            persistent_workers=False,
            prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
            # Its own stream for the workers' base seed (which no transform here uses): the
            # process-wide one, saved in checkpoints, is not drawn from when an epoch starts.
            generator=torch.Generator().manual_seed(seed),
        )

    def epoch(self, epoch: int, order: Tensor, batch_size: int) -> Iterator[LoadedBatch]:
        """The batches of one epoch: ``order`` (image indices) cut into ``batch_size`` pieces.

        The epoch :meth:`prefetch` started, when it asked for the same; a new start otherwise.
        """
        order = torch.as_tensor(order, dtype=torch.long)
        if self._ahead is not None:
            (ahead_epoch, ahead_batch, ahead_order), batches = self._ahead
            self._ahead = None
            if (ahead_epoch, ahead_batch) == (epoch, batch_size) and torch.equal(
                ahead_order, order
            ):
                return batches
        return self._start(epoch, order, batch_size)

    def prefetch(self, epoch: int, order: Tensor, batch_size: int) -> None:
        """Start the workers on an epoch now: they fill their queues while the caller evaluates.

        :meth:`epoch` with the same arguments then yields these batches.
        """
        order = torch.as_tensor(order, dtype=torch.long)
        self._ahead = ((epoch, batch_size, order), self._start(epoch, order, batch_size))

    def _start(self, epoch: int, order: Tensor, batch_size: int) -> Iterator[LoadedBatch]:
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2; got {batch_size}")
        self._batches.set(epoch, order, batch_size)
        starts = self._batches.starts()
        loaded = iter(self._loader)  # the workers start and fill their queues from here
        return self._loaded(self.seed, epoch, starts, loaded)

    def close(self) -> None:
        """End the workers of an epoch started ahead that will not be trained.

        A trial that stops, or fails, after ``prefetch``; nothing else runs between epochs.
        """
        self._ahead = None  # the last reference to its iterator, whose workers end with it

    @staticmethod
    def _loaded(
        seed: int, epoch: int, starts: range, loaded: Iterator[tuple[Tensor, Tensor]]
    ) -> Iterator[LoadedBatch]:
        # Static: a generator holding the loader would keep the workers of an epoch started
        # ahead alive until the cyclic garbage collector ran.
        for start, (images, labels) in zip(starts, loaded, strict=True):
            yield LoadedBatch(images, labels, sample_seed(seed, epoch, start, BATCH_STREAM), start)


class EvalCrops:
    """A source's images seen through a per-image evaluation transform, as an ImageSource.

    ``read`` applies ``transform`` (PIL in, uint8 (3, S, S) out: Table 10's resize and centre
    crop) to each image on a thread pool (PIL releases the GIL while it decodes and resizes).
    """

    def __init__(
        self, source: ImageSource, transform: Callable[[Image.Image], Tensor], image_size: int
    ) -> None:
        self.source, self.transform, self.image_size = source, transform, image_size
        self.labels = source.labels
        self.classes = list(source.classes)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: IndexLike) -> Tensor:
        """The evaluation views of the images at ``indices``, in that order."""
        index = as_index(indices, len(self)).tolist()
        size = self.image_size
        out = torch.empty((len(index), 3, size, size), dtype=torch.uint8)

        def fill(i: int) -> None:
            out[i] = self.transform(self.source.open_image(index[i]))

        parallel_fill(len(index), fill)
        return out

    def open_image(self, index: int) -> Image.Image:
        """The evaluation view of image ``index``."""
        return to_pil(self.read([index])[0])

    def __repr__(self) -> str:
        return f"EvalCrops({self.source!r}, {self.image_size}px)"


def eval_crops(
    source: ImageSource, transform: Callable[[Image.Image], Tensor], image_size: int
) -> ImageSource:
    """:class:`EvalCrops` of ``source``, decoded once into an ImageSet when it fits in memory.

    The view is deterministic and evaluation reads every image every epoch: decode it once.
    """
    crops = EvalCrops(source, transform, image_size)
    if len(crops) * 3 * image_size**2 > IN_MEMORY_LIMIT_BYTES:
        return crops
    return ImageSet(crops.read(torch.arange(len(crops))), crops.labels, crops.classes)
