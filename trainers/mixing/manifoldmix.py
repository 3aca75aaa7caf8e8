"""ManifoldMix (Verma et al., 2019): Mixup applied to hidden features instead of the input.

The policy is Mixup's interpolation applied to a tensor of any shape (N, ...). The
backbone draws, once per batch, the stage at which to mix (stage 0 is the input itself) and
calls this policy on the features that reach it, so the rest of the network sees mixed
features and the loss uses the returned ``y_a``, ``y_b`` and ``lam``. Interpolation-based, in
the paper's words (appendix A.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.mixing.base import LambdaMode, MixedBatch
from trainers.mixing.mixup import mixup


def manifoldmix(
    features: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
) -> MixedBatch:
    """Interpolate ``features`` (input images or hidden activations) with ``Beta(alpha, alpha)``.

    The operation is Mixup's; what makes it ManifoldMix is where the backbone applies it.
    """
    return mixup(features, targets, alpha=alpha, generator=generator, lambda_mode=lambda_mode)
