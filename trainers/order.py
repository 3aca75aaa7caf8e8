"""The per-epoch order of each rank's training images, with or without repeated augmentation.

The DeiT and RSB A3 recipes train with repeated augmentation (Table 10, ``Recipe.repeated_aug``);
every other recipe shards a fresh permutation per epoch, as ``DistributedSampler`` does.
"""

from __future__ import annotations

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch import Tensor
from torch.utils.data import DistributedSampler


def repeated_aug_sampler(
    num_images: int, *, rank: int, world_size: int, num_repeats: int = 3
) -> RepeatAugSampler:
    """A ``timm`` ``RepeatAugSampler`` (DeiT's repeated augmentation) over the images.

    Each epoch every rank draws ``len(sampler)`` indices (about ``num_images / world_size``,
    rounded down to multiples of 256 images in all); the shuffled images are repeated
    ``num_repeats`` times in a row and dealt round robin to the ranks, so the copies of one image
    land on different ranks (on ``world_size >= num_repeats``) and are augmented differently.
    An epoch so sees about ``num_images / num_repeats`` distinct images. Its order depends on
    ``set_epoch`` only (timm seeds it with the epoch number).
    """
    _check_sharding(num_images, rank, world_size)
    return RepeatAugSampler(
        range(num_images),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        num_repeats=num_repeats,
    )


def epoch_order(
    num_images: int,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    repeated_aug: bool,
    num_repeats: int = 3,
) -> Tensor:
    """The image indices (int64) of ``rank`` for one epoch, the same length on every rank.

    Without repeated augmentation: ``torch.utils.data.DistributedSampler`` (shuffle, seed
    ``seed``, ``set_epoch(epoch)``): a permutation sharded round robin, padded by wrapping to a
    multiple of ``world_size``. With it: ``repeated_aug_sampler`` with ``set_epoch(seed +
    epoch)``. Both seed their permutation with ``seed + epoch`` (DistributedSampler's rule), so
    the order is deterministic per (seed, epoch) and changes every epoch; note that seed s + 1
    at epoch e replays seed s at epoch e + 1.
    """
    _check_sharding(num_images, rank, world_size)
    if epoch < 0 or seed < 0:
        raise ValueError(f"epoch and seed must be >= 0; got {epoch}, {seed}")
    sampler: DistributedSampler | RepeatAugSampler
    if repeated_aug:
        sampler = repeated_aug_sampler(
            num_images, rank=rank, world_size=world_size, num_repeats=num_repeats
        )
        sampler.set_epoch(seed + epoch)
    else:
        sampler = DistributedSampler(
            range(num_images),  # type: ignore[arg-type]  # any sized object will do
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
        )
        sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


def epoch_length(
    num_images: int, *, world_size: int, repeated_aug: bool, num_repeats: int = 3
) -> int:
    """Images each rank trains on per epoch: the length of ``epoch_order``'s order.

    Read from the same samplers, without drawing the order: ``DistributedSampler`` pads to
    ``ceil(num_images / world_size)``; ``RepeatAugSampler`` keeps about ``num_images /
    world_size`` (rounded down to multiples of 256 images in all).
    """
    _check_sharding(num_images, 0, world_size)
    if repeated_aug:
        sampler = repeated_aug_sampler(
            num_images, rank=0, world_size=world_size, num_repeats=num_repeats
        )
        return len(sampler)
    plain: DistributedSampler[int] = DistributedSampler(
        range(num_images),  # type: ignore[arg-type]  # any sized object will do
        num_replicas=world_size,
        rank=0,
        shuffle=False,
    )
    return len(plain)


def _check_sharding(num_images: int, rank: int, world_size: int) -> None:
    if num_images < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            "need num_images >= 1, world_size >= 1 and 0 <= rank < world_size; got "
            f"{num_images}, {world_size}, {rank}"
        )
