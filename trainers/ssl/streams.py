"""The labelled and unlabelled image streams of a semi-supervised run, a pure function of the step.

Each stream walks through its images in passes, each pass a fresh permutation drawn from the
trial's seed and the pass's number, and step ``k`` of rank ``r`` takes the ``r``-th of the
world's equal shares of the ``k``-th global batch. A batch is therefore a function of (seed,
step, rank), so a resumed run draws the same images with nothing saved but the step, and ranks
never train on the same position of a batch. (TorchSSL draws each stream with a
``RandomSampler`` over as many samples as the run's steps need; passes of permutations are the
same distribution without replacement inside a pass.)
"""

from __future__ import annotations

import torch
from torch import Tensor


class Stream:
    """Positions ``[start, start + length)`` of an endless sequence of permutations of ``count``."""

    def __init__(self, count: int, seed: int) -> None:
        if count < 1:
            raise ValueError(f"a stream needs at least one image; got {count}")
        self.count = count
        self.seed = seed
        self._pass = -1
        self._order = torch.empty(0, dtype=torch.long)

    def _permutation(self, index: int) -> Tensor:
        if index != self._pass:  # one pass cached; a batch spanning passes draws them again
            # Modulo 2^63: a large trial seed times the spread would overflow manual_seed.
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
            self._order = torch.randperm(self.count, generator=generator)
            self._pass = index
        return self._order

    def take(self, start: int, length: int) -> Tensor:
        """The image positions (into the stream's images) at ``start`` to ``start + length``."""
        parts = []
        position = start
        while position < start + length:
            index, offset = divmod(position, self.count)
            chunk = min(self.count - offset, start + length - position)
            parts.append(self._permutation(index)[offset : offset + chunk])
            position += chunk
        return torch.cat(parts)

    def batch(self, step: int, size: int, rank: int, world_size: int) -> Tensor:
        """Rank ``rank``'s ``size`` positions of step ``step`` (global batch ``size * world``)."""
        return self.take((step * world_size + rank) * size, size)
