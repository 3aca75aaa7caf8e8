"""Mixup (Zhang et al., 2018): a linear interpolation of two inputs.

``x = lam * x_a + (1 - lam) * x_b`` with ``lam ~ Beta(alpha, alpha)``; the loss sees the same
``lam`` (Eq. 1 of the DM paper). Interpolation-based, in the paper's words (appendix A.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.mixing.base import (
    LambdaMode,
    MixedBatch,
    check_batch,
    draw_count,
    draw_permutation,
    mixed_batch,
    sample_beta,
)


def interpolate(x: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """``lam[n] * x[n] + (1 - lam[n]) * x[perm[n]]`` for a tensor of any shape (N, ...).

    ``lam`` has shape (N,), or (1,) for one weight for the whole batch.
    """
    weight = lam.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.lerp(x[perm], x, weight)


def mixup(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
) -> MixedBatch:
    """Mix each sample with a partner by ``lerp`` with ``lam ~ Beta(alpha, alpha)``.

    One ``lam`` for the batch, or one per sample (``lambda_mode``).
    """
    check_batch(inputs, targets, generator, images=False, alpha=alpha, lambda_mode=lambda_mode)
    n = inputs.shape[0]
    lam = sample_beta(alpha, draw_count(n, lambda_mode), generator, inputs.device)
    perm = draw_permutation(n, generator, inputs.device)
    return mixed_batch(interpolate(inputs, perm, lam), targets, lam, perm)
