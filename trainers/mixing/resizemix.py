"""ResizeMix (Qin et al., 2020): paste the whole partner image, shrunk, at a random place.

Per batch (or per sample, ``lambda_mode``), the "b" image is resized by a scale
``tau ~ U[0.1, 0.8]`` (the ResizeMix paper's range) and pasted, whole and unclipped, at a
uniformly drawn position in the "a" image; ``lam`` is the share of the "a" image left visible.
The resizing of every sample happens in one ``grid_sample`` call with a per-sample affine map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.mixing import boxes
from trainers.mixing.base import (
    LambdaMode,
    MixedBatch,
    check_batch,
    draw_count,
    draw_permutation,
    draw_uniform,
    mixed_batch,
)

SCALE_RANGE = (0.1, 0.8)


def resize_into_boxes(images: Tensor, box: boxes.Boxes) -> Tensor:
    """Each image bilinearly resized to fill its box; values outside the boxes are unspecified.

    ``box`` holds one box per image, or one box for them all.
    """
    n, channels, height, width = images.shape
    top, bottom, left, right = (b.to(images.dtype).expand(n) for b in box)
    box_h, box_w = bottom - top, right - left
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: the box's span is
    # stretched onto the whole source image (align_corners=False convention).
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = width / box_w
    theta[:, 0, 2] = (width - 2 * left) / box_w - 1
    theta[:, 1, 1] = height / box_h
    theta[:, 1, 2] = (height - 2 * top) / box_h - 1
    grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resizemix(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> MixedBatch:
    """Paste each partner image, shrunk by ``tau ~ U[scale_range]``, into ``inputs[n]``.

    ``alpha`` is accepted so that every policy has the same signature, and is not used: ResizeMix
    draws its scale uniformly, not from a Beta distribution. One scale and place for the batch,
    or one per sample (``lambda_mode``).
    """
    del alpha
    check_batch(inputs, targets, generator, images=True, alpha=None, lambda_mode=lambda_mode)
    low, high = scale_range
    if not 0 < low <= high <= 1:
        raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1; got {scale_range!r}")
    n, _, height, width = inputs.shape
    device = inputs.device
    draws = draw_count(n, lambda_mode)
    tau = low + (high - low) * draw_uniform(draws, generator, device)
    box_h = torch.round(tau * height).long().clamp(1, height)
    box_w = torch.round(tau * width).long().clamp(1, width)
    top = (draw_uniform(draws, generator, device) * (height - box_h + 1)).long()
    left = (draw_uniform(draws, generator, device) * (width - box_w + 1)).long()
    perm = draw_permutation(n, generator, device)
    box = (top, top + box_h, left, left + box_w)
    patches = resize_into_boxes(inputs[perm], box)
    mixed = boxes.paste(inputs, patches, boxes.box_mask(box, height, width))
    return mixed_batch(mixed, targets, boxes.share_outside(box, height, width), perm)
