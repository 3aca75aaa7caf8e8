"""The asymmetric strategy (AS, Sec. 3.2): labelled samples mixed with unlabelled ones.

Sample ``n`` of the result mixes the labelled ``labelled[n]`` (share ``lam[n]``) with the
unlabelled ``unlabelled[n]`` (share ``1 - lam[n]``): ``x = lam * x_a + (1 - lam) * u_b``, the
labels ``y = lam * y_a + (1 - lam) * v_b`` being the loss's business
(:func:`trainers.losses.as_dm_ce`). ``lam`` is asymmetric: Beta(alpha, alpha) folded to
``lam <= 0.5`` (``side="labelled_minor"``, the paper's AS: the labelled class is the minor one,
which the decoupled term raises) or to ``lam >= 0.5`` (``"labelled_major"``, the ablation of
Table 9).

Every static policy mixes a pair this way, and ``lam`` is what the labelled sample really
holds: its pixel share for the cutting-based policies, kept on the asked side of 0.5 by how the
cut is sized and placed:

* ``mixup``, ``manifoldmix``: ``torch.lerp`` of the two (ManifoldMix's operation: give it the
  features entering the drawn stage of both batches, e.g. a forward of the concatenated batch
  whose ``mix`` splits it in two);
* ``cutmix``: a box of the unlabelled image of area ``(1 - lam) H W``, its sides rounded up
  (``labelled_minor``) or down (``labelled_major``) so the box never falls short of (or
  exceeds) half the image, placed uniformly where it fits whole: no clipping changes it;
* ``saliencymix``: the same box, centred on the unlabelled image's saliency peak (SaliencyMix's
  choice) and shifted inside the image where it would cross the border (rather than clipped);
* ``fmix``: the labelled image keeps ``floor`` (``labelled_minor``) or ``ceil`` of ``lam H W``
  pixels, the top of a low-frequency noise map, as FMix does with ``round``;
* ``resizemix``: the unlabelled image resized into a box of side ``tau`` times the image's,
  ``tau`` uniform on the part of ResizeMix's range ``[0.1, 0.8]`` that puts the labelled share
  ``1 - tau^2`` on the asked side (``tau >= sqrt(1/2)`` for ``labelled_minor``), its sides
  rounded as CutMix's; ``alpha`` is unused, as in ResizeMix.

``lambda_mode`` as for every policy: one draw per batch (the default) or per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from trainers.mixing import boxes
from trainers.mixing.base import (
    LambdaMode,
    SaliencyDetector,
    check_batch,
    draw_count,
    draw_uniform,
    sample_beta,
)
from trainers.mixing.fmix import DECAY_POWER, low_frequency_noise, top_count_mask
from trainers.mixing.resizemix import SCALE_RANGE, resize_into_boxes
from trainers.mixing.saliency import check_detector, salient_points
from trainers.vocabulary import STATIC_POLICIES

Side = Literal["labelled_minor", "labelled_major"]
SIDES: tuple[str, ...] = get_args(Side)


@dataclass(frozen=True)
class AsymmetricBatch:
    """Labelled samples mixed with unlabelled ones: ``inputs[n]`` holds ``lam[n]`` of the first."""

    inputs: Tensor
    lam: Tensor  # float32, shape (N,): the labelled share, on the asked side of 0.5
    policy: str
    side: Side


def fold(lam: Tensor, side: Side) -> Tensor:
    """``min(lam, 1 - lam)`` (``labelled_minor``) or ``max(lam, 1 - lam)`` (``labelled_major``)."""
    return torch.minimum(lam, 1 - lam) if side == "labelled_minor" else torch.maximum(lam, 1 - lam)


def _cut_sides(cover: Tensor, size: int, side: Side) -> Tensor:
    """Box sides of ``sqrt(cover) * size`` pixels, rounded so the area stays on its side of 1/2.

    ``cover`` is the box's share of the image: at least 1/2 for ``labelled_minor`` (sides
    rounded up), at most 1/2 for ``labelled_major`` (rounded down).
    """
    exact = torch.sqrt(cover.clamp(0, 1)) * size
    rounded = torch.ceil(exact) if side == "labelled_minor" else torch.floor(exact)
    return rounded.long().clamp(0, size)


def _placed_inside(lengths: Tensor, size: int, start: Tensor) -> Tensor:
    """``start`` moved so that ``[start, start + length)`` lies within ``[0, size)``."""
    return torch.minimum(start.clamp(min=0), size - lengths)


def asymmetric_mix(
    policy: str,
    labelled: Tensor,
    unlabelled: Tensor,
    *,
    alpha: float,
    side: Side,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
    saliency_detector: SaliencyDetector = "fine_grained",
) -> AsymmetricBatch:
    """Mix ``labelled[n]`` with ``unlabelled[n]`` by ``policy``, ``lam`` folded to ``side``."""
    if policy not in STATIC_POLICIES:
        raise ValueError(
            f"AS mixes with a static policy; got {policy!r}, allowed: {', '.join(STATIC_POLICIES)}"
        )
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    if unlabelled.shape != labelled.shape:
        raise ValueError(
            f"unlabelled must have the labelled batch's shape {tuple(labelled.shape)} (one "
            f"partner per labelled sample); got {tuple(unlabelled.shape)}"
        )
    images = policy not in ("mixup", "manifoldmix")
    n = labelled.shape[0]
    placeholder = torch.zeros(n, dtype=torch.long, device=labelled.device)
    check_batch(
        labelled,
        placeholder,
        generator,
        images=images,
        alpha=None if policy == "resizemix" else alpha,
        lambda_mode=lambda_mode,
    )
    device, draws = labelled.device, draw_count(n, lambda_mode)
    if policy in ("mixup", "manifoldmix"):
        lam = fold(sample_beta(alpha, draws, generator, device), side)
        weight = lam.to(labelled.dtype).reshape(-1, *([1] * (labelled.dim() - 1)))
        mixed = torch.lerp(unlabelled, labelled, weight)  # Mixup's interpolation, pairs given
        return AsymmetricBatch(mixed, lam.float().expand(n).contiguous(), policy, side)
    _, _, height, width = labelled.shape
    if policy == "fmix":
        lam = fold(sample_beta(alpha, draws, generator, device), side)
        noise = low_frequency_noise(
            draws, height, width, decay_power=DECAY_POWER, generator=generator, device=device
        )
        pixels = height * width
        exact = lam * pixels
        keep = torch.floor(exact) if side == "labelled_minor" else torch.ceil(exact)
        mask, share = top_count_mask(noise.flatten(1), keep.long())
        mixed = torch.where(mask.view(draws, 1, height, width), labelled, unlabelled)
        return AsymmetricBatch(mixed, share.float().expand(n).contiguous(), policy, side)
    if policy == "resizemix":
        low, high = SCALE_RANGE
        half = math.sqrt(0.5)  # tau at which the labelled share 1 - tau^2 is 1/2
        low, high = (max(low, half), high) if side == "labelled_minor" else (low, min(high, half))
        tau = low + (high - low) * draw_uniform(draws, generator, device)
        cover = tau**2
    else:
        cover = 1 - fold(sample_beta(alpha, draws, generator, device), side)
    cut_h, cut_w = _cut_sides(cover, height, side), _cut_sides(cover, width, side)
    if policy == "saliencymix":
        peak_y, peak_x = salient_points(unlabelled[:draws], check_detector(saliency_detector))
        top, left = peak_y - cut_h // 2, peak_x - cut_w // 2
    else:
        top = (draw_uniform(draws, generator, device) * (height - cut_h + 1)).long()
        left = (draw_uniform(draws, generator, device) * (width - cut_w + 1)).long()
    top, left = _placed_inside(cut_h, height, top), _placed_inside(cut_w, width, left)
    box = (top, top + cut_h, left, left + cut_w)
    patches = resize_into_boxes(unlabelled, box) if policy == "resizemix" else unlabelled
    mixed = boxes.paste(labelled, patches, boxes.box_mask(box, height, width))
    share = boxes.share_outside(box, height, width)
    return AsymmetricBatch(mixed, share.float().expand(n).contiguous(), policy, side)
