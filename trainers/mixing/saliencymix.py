"""SaliencyMix (Uddin et al., 2021): CutMix with the box centred on the partner's salient point.

The box has CutMix's size, ``(1 - lam) * H * W`` with ``lam ~ Beta(alpha, alpha)``, but is
centred on the most salient pixel of the "b" image (the one it is cut from) and pasted at the
same place in the "a" image, so the patch keeps the partner's object. Saliency is the spectral
residual of Hou & Zhang (2007), the detector SaliencyMix uses, computed for the whole batch with
``torch.fft`` on the batch's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.mixing import boxes
from trainers.mixing.base import MixedBatch, check_batch, draw_permutation, mixed_batch, sample_beta

# The spectral residual is computed on images no larger than this (as OpenCV does, at 64 px),
# which keeps the FFT cheap at 224 px and smooths away pixel noise.
SALIENCY_SIZE = 64


def _gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    radius = max(1, round(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def spectral_residual_saliency(images: Tensor) -> Tensor:
    """Saliency maps (N, h, w) of images (N, C, H, W) at ``min(H, W, 64)``-pixel resolution.

    Log amplitude spectrum minus its 3x3 local mean (the "spectral residual"), back to the image
    domain with the original phase, squared magnitude, Gaussian smoothing.
    """
    gray = images.float().mean(dim=1, keepdim=True)
    height, width = gray.shape[-2:]
    if max(height, width) > SALIENCY_SIZE:
        scale = SALIENCY_SIZE / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        gray = F.interpolate(gray, size=size, mode="area")
    spectrum = torch.fft.fft2(gray)
    log_amplitude = torch.log(spectrum.abs() + 1e-8)
    local_mean = F.avg_pool2d(
        F.pad(log_amplitude, (1, 1, 1, 1), mode="replicate"), kernel_size=3, stride=1
    )
    residual = torch.polar(torch.exp(log_amplitude - local_mean), spectrum.angle())
    saliency = torch.fft.ifft2(residual).abs().square()
    return _gaussian_blur(saliency, sigma=max(gray.shape[-2:]) / 32).squeeze(1)


def salient_points(images: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column (in full-resolution pixels) of each image's most salient point."""
    height, width = images.shape[-2:]
    saliency = spectral_residual_saliency(images)
    small_h, small_w = saliency.shape[-2:]
    peak = saliency.flatten(1).argmax(dim=1)
    row, col = peak // small_w, peak % small_w
    # Centre of the low-resolution cell, mapped back to full resolution.
    return (row * height + height // 2) // small_h, (col * width + width // 2) // small_w


def saliencymix(
    inputs: Tensor, targets: Tensor, *, alpha: float, generator: torch.Generator
) -> MixedBatch:
    """Paste the salient region of each partner image ``inputs[perm[n]]`` into ``inputs[n]``."""
    check_batch(inputs, targets, generator, images=True, alpha=alpha)
    n, _, height, width = inputs.shape
    cut_h, cut_w = boxes.cut_size(sample_beta(alpha, n, generator, inputs.device), height, width)
    perm = draw_permutation(n, generator, inputs.device)
    partners = inputs[perm]
    centre_y, centre_x = salient_points(partners)
    box = boxes.centred_boxes(centre_y, centre_x, cut_h, cut_w, height, width)
    mixed = boxes.paste(inputs, partners, boxes.box_mask(box, height, width))
    return mixed_batch(mixed, targets, boxes.share_outside(box, height, width), perm)
