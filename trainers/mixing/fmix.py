"""FMix (Harris et al., 2020): a binary mask from thresholded low-frequency Fourier noise.

Per batch (or per sample, ``lambda_mode``): complex Gaussian noise in the frequency domain,
attenuated by ``1 / f ** decay_power`` (FMix's default 3, which leaves large smooth blobs), back
to the image domain; the ``round(lam * H * W)`` highest pixels of that map come from the "a"
image and the rest from the partner, with ``lam ~ Beta(alpha, alpha)``. ``lam`` is then the
mask's exact mean.
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

DECAY_POWER = 3.0


def low_frequency_noise(
    n: int,
    height: int,
    width: int,
    *,
    decay_power: float,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """Real noise maps (n, H, W) whose spectrum falls off as ``1 / f ** decay_power``."""
    freq_y = torch.fft.fftfreq(height, device=device)[:, None]
    freq_x = torch.fft.rfftfreq(width, device=device)[None, :]
    freq = torch.sqrt(freq_y**2 + freq_x**2).clamp(min=1.0 / max(height, width))
    amplitude = freq.pow(-decay_power)
    shape = (n, height, width // 2 + 1)
    real = torch.randn(shape, generator=generator, device=device)
    imag = torch.randn(shape, generator=generator, device=device)
    return torch.fft.irfft2(torch.complex(real, imag) * amplitude, s=(height, width))


def top_count_mask(scores: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``scores`` (N, P): True at its ``keep[n]`` highest entries.

    Returns the mask and the exact fraction of True entries per row.
    """
    pixels = scores.shape[1]
    order = scores.argsort(dim=1, descending=True)
    ranks_kept = torch.arange(pixels, device=scores.device)[None, :] < keep[:, None]
    mask = torch.zeros_like(ranks_kept).scatter_(1, order, ranks_kept)
    return mask, keep.double() / pixels


def top_fraction_mask(scores: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``scores`` (N, P): True at its ``round(lam * P)`` highest entries.

    Returns the mask and the exact fraction of True entries per row.
    """
    return top_count_mask(scores, torch.round(lam * scores.shape[1]).long())


def fmix(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
    decay_power: float = DECAY_POWER,
) -> MixedBatch:
    """Mix each image with its partner through a Fourier-noise mask of mean ``lam``.

    One mask for the batch, or one per sample (``lambda_mode``).
    """
    check_batch(inputs, targets, generator, images=True, alpha=alpha, lambda_mode=lambda_mode)
    n, _, height, width = inputs.shape
    device = inputs.device
    draws = draw_count(n, lambda_mode)
    lam = sample_beta(alpha, draws, generator, device)
    noise = low_frequency_noise(
        draws, height, width, decay_power=decay_power, generator=generator, device=device
    )
    perm = draw_permutation(n, generator, device)
    mask, lam = top_fraction_mask(noise.flatten(1), lam)
    mixed = torch.where(mask.view(draws, 1, height, width), inputs, inputs[perm])
    return mixed_batch(mixed, targets, lam, perm)
