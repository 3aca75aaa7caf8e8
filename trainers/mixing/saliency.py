"""Saliency detectors for SaliencyMix, batched on the batch's device.

``fine_grained`` (the default) is the static fine-grained saliency of Montabone & Soto, "Human
detection using a mobile platform and novel features derived from a visual saliency mechanism"
(Image and Vision Computing 28(3), 2010), as OpenCV implements it
(``cv2.saliency.StaticSaliencyFineGrained``, opencv-contrib): the detector SaliencyMix (Uddin et
al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better Regularization", ICLR
2021) and OpenMixup call. It is reimplemented here step for step, in integer arithmetic where
OpenCV's is integer and in float32 where OpenCV's is float32, so that the map equals OpenCV's
8-bit map (tests/test_saliencymix.py compares them on CIFAR-10 JPEGs):

1. grey level: OpenCV's 8-bit BGR-to-grey conversion (15-bit fixed-point weights 0.299 R +
   0.587 G + 0.114 B, rounded);
2. two 3x3 Gaussian blurs (kernel [1, 2, 1] / 4 each way, border reflected without repeating the
   edge pixel, rounded to 8 bits after each);
3. at six neighbourhood sizes n in {12, 24, 48, 28, 56, 112}: the mean of the window of rows
   ``y - n + 1 .. y + n`` and columns ``x - n + 1 .. x + n`` (clipped at the border) without the
   centre pixel; "on" is how much brighter the centre is, "off" how much darker, each truncated
   to an integer;
4. "on" and "off" summed over the scales, each scaled to 0..255 by its maximum (float32
   quotient, truncated);
5. on + off scaled by the larger of the two maxima, truncated to an integer and kept to its low
   8 bits, as OpenCV's cast to ``uchar`` does (a pixel brighter than one neighbourhood and
   darker than another could pass 255 and wrap; not seen on CIFAR-10).

Because "on" and "off" are each scaled to 255, the map's maximum is 255 and is reached at least
twice on natural images (at the pixel brightest and the one darkest relative to its surround:
all of 500 CIFAR-10 test images); the peak, NumPy's first maximum in row-major order as in
OpenMixup, is then whichever comes first, so peaks lean towards the top rows. That is OpenCV's
detector, and it is kept as it is.

Its integral image is exact here; OpenCV's is float32 and rounds once a window's sum passes
2**24, i.e. only for images of more than 65,793 pixels (larger than 256 x 256). A constant
image has the all-zero map (OpenCV divides 0 by 0 there).

OpenCV reads 8-bit images; the policy receives normalised float images. Each image is mapped
to 0..255 by its own minimum and maximum over all channels, then rounded. This does not undo
the normalisation exactly (its per-channel scales differ by a few per cent, and the image's
contrast is stretched to the full range): on 500 CIFAR-10 test images normalised with CIFAR-10's
statistics, the peak is OpenCV's peak of the original JPEG for 75% and within 2 pixels of it for
96% (the map has tied maxima, see above). OpenMixup (``saliency_bbox`` in
``openmixup/models/augments/saliencymix.py``, which cites the SaliencyMix authors' CIFAR code)
hands OpenCV the normalised float32 image, RGB where OpenCV expects BGR, without de-normalising
it: OpenCV's source then converts it to grey in float32 but reads that grey image as bytes
(``at<uchar>``), i.e. the bytes of the floats, so the map has little to do with the picture (on
200 CIFAR-10 images, its peak is the 8-bit map's peak for 1). That is not a detector anyone
meant to use; the rescaling keeps what SaliencyMix describes, the peak of the image's
fine-grained saliency.

``spectral_residual`` is the spectral residual of Hou & Zhang, "Saliency Detection: A Spectral
Residual Approach" (CVPR 2007), computed with ``torch.fft`` at no more than 64 pixels a side: a
cheaper detector of another family, a named option and not SaliencyMix's.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.mixing.base import SaliencyDetector

DETECTORS: tuple[str, ...] = get_args(SaliencyDetector)

# Half-widths of the six neighbourhoods of the fine-grained detector (Montabone & Soto 2010).
NEIGHBOURHOODS = (12, 24, 48, 28, 56, 112)

# OpenCV's 8-bit BGR-to-grey weights: 0.299, 0.587 and 0.114 in 15-bit fixed point.
_GREY_SHIFT = 15
_GREY_WEIGHTS = (9798, 19235, 3735)  # R, G, B

# The spectral residual is computed on images no larger than this (as OpenCV does, at 64 px),
# which keeps the FFT cheap at 224 px and smooths away pixel noise.
SALIENCY_SIZE = 64


def check_detector(detector: object) -> SaliencyDetector:
    """``detector`` if it names a detector, else a ValueError listing the allowed names."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown saliency detector {detector!r}; allowed: {', '.join(DETECTORS)}")
    return detector  # type: ignore[return-value]  # checked against the Literal's values


def to_uint8_levels(images: Tensor) -> Tensor:
    """Integer levels 0..255 (int32, same shape) of each image of (N, C, H, W), by its own range.

    The policy sees normalised images and does not know the normalisation: an affine map per
    image (the same for every channel) brings each back to the full 8-bit range.
    """
    flat = images.detach().float().flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = (flat.amax(dim=1).view(-1, 1, 1, 1) - low).clamp(min=1e-12)
    levels = ((images.detach().float() - low) * (255.0 / span)).round().clamp(0, 255)
    return levels.to(torch.int32)


def _grey(levels: Tensor) -> Tensor:
    """OpenCV's 8-bit grey of RGB levels (N, 3, H, W): int32 (N, H, W).

    Other channel counts (which OpenCV's colour conversion does not take) use the rounded mean
    of the channels, the level itself for one channel.
    """
    channels = levels.shape[1]
    if channels != 3:
        return (levels.sum(dim=1) * 2 + channels) // (2 * channels)
    red, green, blue = levels.unbind(dim=1)
    weight_r, weight_g, weight_b = _GREY_WEIGHTS
    total = red * weight_r + green * weight_g + blue * weight_b
    return (total + (1 << (_GREY_SHIFT - 1))) >> _GREY_SHIFT


def _reflect_pad_1(grey: Tensor, dim: int) -> Tensor:
    """Pad one pixel on both ends of ``dim``, reflected without the edge (OpenCV's default)."""
    size = grey.shape[dim]
    inner = 1 if size > 1 else 0  # a one-pixel side reflects onto itself
    before = grey.narrow(dim, inner, 1)
    after = grey.narrow(dim, size - 1 - inner, 1)
    return torch.cat([before, grey, after], dim=dim)


def _blur_3x3(grey: Tensor) -> Tensor:
    """OpenCV's 3x3 Gaussian blur of 8-bit levels (N, H, W): exact sums, rounded half up."""
    rows = _reflect_pad_1(grey, 1)
    rows = rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]
    cols = _reflect_pad_1(rows, 2)
    total = cols[:, :, :-2] + 2 * cols[:, :, 1:-1] + cols[:, :, 2:]
    return (total + 8) >> 4


def _window_bounds(size: int, half: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """First and past-the-end index of each pixel's window ``i - half + 1 .. i + half``."""
    index = torch.arange(size, device=device)
    return (index - half + 1).clamp(0, size), (index + half + 1).clamp(0, size)


def _on_off(grey: Tensor, integral: Tensor, half: int) -> tuple[Tensor, Tensor]:
    """How much brighter ("on") and darker ("off") each pixel is than its window, truncated."""
    height, width = grey.shape[1:]
    top, bottom = _window_bounds(height, half, grey.device)
    left, right = _window_bounds(width, half, grey.device)

    def corner(rows: Tensor, cols: Tensor) -> Tensor:
        return integral.index_select(1, rows).index_select(2, cols)

    window = corner(bottom, right) + corner(top, left) - corner(bottom, left) - corner(top, right)
    count = (bottom - top)[:, None] * (right - left)[None, :] - 1
    # OpenCV: float32 sum minus the centre, divided by the pixel count less one, in float32.
    mean = (window - grey).float() / count.float()
    on = grey.float() - mean
    off = mean - grey.float()
    zero = torch.zeros((), dtype=torch.int32, device=grey.device)
    return (
        torch.where(on > 0, on.trunc().to(torch.int32), zero),
        torch.where(off > 0, off.trunc().to(torch.int32), zero),
    )


def _scale_to_255(summed: Tensor) -> Tensor:
    """``summed`` (N, H, W) times 255 over its per-image maximum, as OpenCV's ``mixScales``."""
    peak = summed.flatten(1).amax(dim=1).view(-1, 1, 1)
    ratio = summed.float() / peak.clamp(min=1).float()  # float32 quotient, as in OpenCV
    scaled = (ratio.double() * 255.0).trunc().to(torch.int32)
    return torch.where(peak > 0, scaled, torch.zeros_like(scaled))


def fine_grained_saliency(images: Tensor) -> Tensor:
    """Fine-grained saliency maps (N, H, W), uint8, of float images (N, C, H, W).

    Each image is first brought to 8-bit levels by its own range (:func:`to_uint8_levels`).
    """
    return fine_grained_map(to_uint8_levels(images))


def fine_grained_map(levels: Tensor) -> Tensor:
    """Fine-grained saliency maps (N, H, W), uint8, of 8-bit RGB levels (N, 3, H, W).

    Equal to ``StaticSaliencyFineGrained().computeSaliency(bgr)`` times 255, ``bgr`` being the
    same image as a NumPy uint8 (H, W, 3) array in OpenCV's BGR order.
    """
    if levels.is_floating_point() or levels.dim() != 4:
        raise ValueError(
            "levels must be an integer tensor of shape (N, C, H, W) holding 0..255; "
            f"got {levels.dtype} of shape {tuple(levels.shape)}"
        )
    grey = _blur_3x3(_blur_3x3(_grey(levels.to(torch.int32))))
    integral = F.pad(grey.to(torch.int64).cumsum(1).cumsum(2), (1, 0, 1, 0))
    on_sum = torch.zeros_like(grey)
    off_sum = torch.zeros_like(grey)
    for half in NEIGHBOURHOODS:
        on, off = _on_off(grey, integral, half)
        on_sum += on
        off_sum += off
    on_scaled, off_scaled = _scale_to_255(on_sum), _scale_to_255(off_sum)
    peak = torch.maximum(on_scaled.flatten(1).amax(dim=1), off_scaled.flatten(1).amax(dim=1))
    peak = peak.view(-1, 1, 1)
    mixed = (255 * (on_scaled + off_scaled)) // peak.clamp(min=1)
    mixed = torch.where(peak > 0, mixed, torch.zeros_like(mixed))
    return (mixed % 256).to(torch.uint8)  # OpenCV's cast keeps the low 8 bits


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
    domain with the original phase, squared magnitude, Gaussian smoothing (Hou & Zhang 2007).
    """
    gray = images.detach().float().mean(dim=1, keepdim=True)
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


def salient_points(
    images: Tensor, detector: SaliencyDetector = "fine_grained"
) -> tuple[Tensor, Tensor]:
    """Row and column (int64, full-resolution pixels) of each image's most salient pixel.

    Ties go to the first pixel in row-major order, as NumPy's ``argmax`` in OpenMixup. The
    spectral residual's map is coarser than the image: its cell's centre is returned.
    """
    detector = check_detector(detector)
    height, width = images.shape[-2:]
    if detector == "fine_grained":
        peak = fine_grained_saliency(images).flatten(1).to(torch.int32).argmax(dim=1)
        return peak // width, peak % width
    saliency = spectral_residual_saliency(images)
    small_h, small_w = saliency.shape[-2:]
    peak = saliency.flatten(1).argmax(dim=1)
    row, col = peak // small_w, peak % small_w
    # Centre of the low-resolution cell, mapped back to full resolution.
    return (row * height + height // 2) // small_h, (col * width + width // 2) // small_w
