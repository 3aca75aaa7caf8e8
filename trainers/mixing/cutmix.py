"""CutMix (Yun et al., 2019): paste a box from the partner image.

Per batch (or per sample, ``lambda_mode``), ``lam ~ Beta(alpha, alpha)`` sets a box of area
``(1 - lam) * H * W`` centred on a uniformly drawn pixel; the box is clipped at the border and
``lam`` recomputed from the area that was really pasted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.mixing import boxes
from trainers.mixing.base import (
    LambdaMode,
    MixedBatch,
    check_batch,
    draw_count,
    draw_permutation,
    mixed_batch,
    sample_beta,
)


def cutmix(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
) -> MixedBatch:
    """Paste a random box of each partner image ``inputs[perm[n]]`` into ``inputs[n]``.

    One box for the batch, or one per sample (``lambda_mode``).
    """
    check_batch(inputs, targets, generator, images=True, alpha=alpha, lambda_mode=lambda_mode)
    n, _, height, width = inputs.shape
    device = inputs.device
    draws = draw_count(n, lambda_mode)
    cut_h, cut_w = boxes.cut_size(sample_beta(alpha, draws, generator, device), height, width)
    centre_y = torch.randint(height, (draws,), generator=generator, device=device)
    centre_x = torch.randint(width, (draws,), generator=generator, device=device)
    perm = draw_permutation(n, generator, device)
    box = boxes.centred_boxes(centre_y, centre_x, cut_h, cut_w, height, width)
    mixed = boxes.paste(inputs, inputs[perm], boxes.box_mask(box, height, width))
    return mixed_batch(mixed, targets, boxes.share_outside(box, height, width), perm)
