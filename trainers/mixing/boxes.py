"""Rectangular regions for the cut-based policies (CutMix, SaliencyMix, ResizeMix), batched.

A box is four (N,) int64 tensors ``top, bottom, left, right`` (bottom and right exclusive),
one box per sample, or (1,) tensors for one box for the whole batch; a mask is built by
broadcasting, so no Python loop runs over samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

Boxes = tuple[Tensor, Tensor, Tensor, Tensor]


def cut_size(lam: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Side lengths of a box of area ``(1 - lam) * H * W`` (before clipping), as in CutMix."""
    ratio = torch.sqrt(1.0 - lam)
    return (ratio * height).long(), (ratio * width).long()


def centred_boxes(
    centre_y: Tensor, centre_x: Tensor, cut_h: Tensor, cut_w: Tensor, height: int, width: int
) -> Boxes:
    """Boxes centred on the given pixels, clipped at the image border.

    Rows ``[cy - cut_h // 2, cy + cut_h // 2)`` and likewise for columns, as CutMix's and
    OpenMixup's CutMix and SaliencyMix place them (one pixel short of ``cut`` when it is odd);
    lambda is recomputed from the box actually pasted, so the rounding never biases it.
    """
    return (
        (centre_y - cut_h // 2).clamp(0, height),
        (centre_y + cut_h // 2).clamp(0, height),
        (centre_x - cut_w // 2).clamp(0, width),
        (centre_x + cut_w // 2).clamp(0, width),
    )


def box_mask(boxes: Boxes, height: int, width: int) -> Tensor:
    """Boolean mask of shape (N, 1, H, W) (or (1, 1, H, W)), True inside each box."""
    top, bottom, left, right = boxes
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def share_outside(boxes: Boxes, height: int, width: int) -> Tensor:
    """Fraction of each image outside its box: the "a" side's lambda once the box is pasted."""
    top, bottom, left, right = boxes
    return 1.0 - ((bottom - top) * (right - left)).double() / (height * width)


def paste(inputs: Tensor, patches: Tensor, mask: Tensor) -> Tensor:
    """``patches`` where ``mask`` is True, ``inputs`` elsewhere."""
    return torch.where(mask, patches, inputs)
