"""Where this process stands under ``torch.distributed``, and the collectives the loop uses.

Without an initialised process group everything degrades to one rank, so the same code runs in
one process, in ``torchrun`` and in Ray Train workers.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """The rank of this process, the number of ranks, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints."""
        return self.rank == 0


def current_ranks(device: Literal["auto", "cpu", "cuda"] = "auto") -> Ranks:
    """The process group's view of this process; CUDA device ``rank % device_count``."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA device is available")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        chosen = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    return Ranks(rank, world_size, chosen)


def all_sum(tensor: Tensor, ranks: Ranks) -> Tensor:
    """``tensor`` summed over every rank, in place."""
    if ranks.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_buffers(model: nn.Module, ranks: Ranks) -> None:
    """Average floating-point buffers (batch-norm running statistics) across ranks.

    DDP keeps parameters in step, but each rank updates its running statistics from its own
    last batch; without this, every rank would evaluate (and rank 0 would save) another model.
    """
    if ranks.world_size == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(ranks.world_size)


def gather(value: T, ranks: Ranks) -> list[T]:
    """Every rank's ``value``, in rank order (a collective: every rank must call it)."""
    if ranks.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * ranks.world_size  # all_gather_object fills every slot
    dist.all_gather_object(gathered, value)
    return gathered


def trial_ranks(device: Literal["auto", "cpu", "cuda"], batch_size: int) -> tuple[Ranks, int]:
    """The ranks of this process for a new trial, and its share of the global ``batch_size``.

    On a GPU, what an earlier trial of the process cached is handed back first (the engine
    keeps a process for several trials) and the peak-memory counter starts again, so that
    ``gpu_memory_peak_gib`` is this trial's.
    """
    ranks = current_ranks(device)
    if ranks.device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ranks.device)
    if batch_size < 2 * ranks.world_size:
        raise ValueError(
            f"batch_size {batch_size} leaves fewer than 2 images for each of the "
            f"{ranks.world_size} ranks"
        )
    return ranks, batch_size // ranks.world_size
