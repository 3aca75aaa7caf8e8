"""SaliencyMix: its fine-grained detector against OpenCV's on real images, where its boxes go,
and its batch and sample modes; the spectral residual as a named option."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.mixing import saliency
from trainers.mixing.saliencymix import saliencymix

CLASSES = 10
PER_CLASS = 20


def opencv() -> ModuleType:
    try:
        import cv2
    except ImportError:  # a failure, not a skip: the comparison is the detector's only check
        pytest.fail(
            "OpenCV's saliency module is missing: install the dev extra "
            "(pip install -e '.[dev]', which brings opencv-contrib-python-headless)"
        )
    return cv2


def opencv_map(cv2: ModuleType, rgb: np.ndarray) -> np.ndarray:
    """OpenCV's fine-grained map of an 8-bit RGB (H, W, 3) image, as 0..255 integers."""
    detector = cv2.saliency.StaticSaliencyFineGrained_create()
    found, level = detector.computeSaliency(np.ascontiguousarray(rgb[:, :, ::-1]))  # BGR
    assert found
    return np.rint(level * 255).astype(np.uint8)  # OpenCV returns its 8-bit map / 255


def ours(rgb: np.ndarray) -> np.ndarray:
    levels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None]
    return saliency.fine_grained_map(levels)[0].numpy()


def cifar_images(root: Path) -> np.ndarray:
    """PER_CLASS test JPEGs of every class, decoded to RGB: (N, 32, 32, 3) uint8."""
    classes = sorted(p for p in (root / "test").iterdir() if p.is_dir())
    assert len(classes) == CLASSES
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[:PER_CLASS]]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def test_fine_grained_map_equals_opencv_on_cifar10_jpegs(cifar10_jpg):
    """Pixel for pixel, no tolerance: every step follows OpenCV's own integer and float32
    arithmetic, so any difference is a step done otherwise. 200 CIFAR-10 test images at 32 px
    (where the larger neighbourhoods are clipped by the border) and 4 upscaled to 224 x 200
    (where none of the six neighbourhoods covers the image)."""
    cv2 = opencv()
    images = cifar_images(cifar10_jpg)
    expected = np.stack([opencv_map(cv2, image) for image in images])
    levels = torch.from_numpy(images).permute(0, 3, 1, 2)
    got = saliency.fine_grained_map(levels).numpy()
    differ = int((got != expected).sum())
    assert differ == 0, f"{differ} of {expected.size} pixels differ from OpenCV's map"
    for image in images[:: len(images) // 4][:4]:
        large = np.asarray(Image.fromarray(image).resize((224, 200), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(ours(large), opencv_map(cv2, large))
    # And so the peak (first maximum, row-major, as NumPy's argmax in OpenMixup) is OpenCV's.
    rows, cols = saliency.salient_points(levels.float())
    first = expected.reshape(len(images), -1).argmax(axis=1)
    levels_span = (images.reshape(len(images), -1).min(1) == 0) & (
        images.reshape(len(images), -1).max(1) == 255
    )
    # For images already spanning 0..255, the policy's rescaling is the identity.
    assert levels_span.sum() > 20
    np.testing.assert_array_equal((rows * 32 + cols).numpy()[levels_span], first[levels_span])


def test_normalised_images_are_brought_back_to_their_levels():
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (4, 3, 16, 16), generator=generator, dtype=torch.int32)
    levels[:, 0, 0, 0], levels[:, 1, 0, 1] = 0, 255
    normalised = (levels.float() / 255 - 0.45) / 0.225
    torch.testing.assert_close(saliency.to_uint8_levels(normalised), levels, rtol=0, atol=0)
    flat = torch.full((2, 3, 8, 8), 0.3)  # no range: all zeros, and a zero map
    assert not saliency.to_uint8_levels(flat).any()
    assert not saliency.fine_grained_saliency(flat).any()


def blob_images(rows: list[int], cols: list[int], size: int = 32) -> torch.Tensor:
    """A bright 3x3 blob per image on a background darkening downwards, image n offset by n.

    OpenCV's detector scales its "brighter than the surround" and "darker than the surround"
    maps each to 255 and adds them (keeping 8 bits), so the darkest-relative pixel ties with the
    brightest one and the first of them in row-major order is the peak. On this background the
    darkest-relative pixels are the bottom rows, after the blob, whatever its place. The offset
    (removed by the per-image rescaling) tells the images apart in the mixed batch.
    """
    n = len(rows)
    ramp = torch.linspace(140, 60, size).round().view(1, 1, size, 1)
    images = ramp.expand(n, 3, size, size).clone()
    for i, (row, col) in enumerate(zip(rows, cols, strict=True)):
        images[i, :, row - 1 : row + 2, col - 1 : col + 2] = 255
    return images / 255 + torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)


def pasted_boxes(inputs: torch.Tensor, mixed: torch.Tensor, perm: torch.Tensor) -> list:
    """Per sample with a distinct partner: (top, bottom, left, right) of the pasted pixels."""
    found = []
    for i in range(len(perm)):
        if perm[i] == i:
            continue
        pasted = (mixed[i] == inputs[perm[i]]).all(dim=0)
        rows, cols = pasted.any(dim=1).nonzero(), pasted.any(dim=0).nonzero()
        box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        top, bottom, left, right = box
        assert pasted.sum() == (bottom - top) * (right - left)  # a rectangle
        found.append((i, box))
    return found


def test_fine_grained_peak_is_the_planted_blob():
    rows, cols = [12, 20, 5, 15, 18, 8], [4, 27, 16, 9, 20, 26]
    peak_rows, peak_cols = saliency.salient_points(blob_images(rows, cols))
    assert peak_rows.tolist() == rows and peak_cols.tolist() == cols
    cv2 = opencv()
    for image, row, col in zip(blob_images(rows, cols), rows, cols, strict=True):
        levels = saliency.to_uint8_levels(image[None])[0].permute(1, 2, 0).to(torch.uint8)
        assert divmod(int(opencv_map(cv2, levels.numpy()).argmax()), 32) == (row, col)


@pytest.mark.parametrize("lambda_mode", ["batch", "sample"])
def test_the_box_is_centred_on_the_partners_blob(lambda_mode):
    """alpha 1000 gives lambda near 1/2, a box of about 22 px, unclipped around these blobs."""
    rows, cols = [11, 14, 20, 16, 12, 19, 15, 13], [12, 20, 16, 11, 19, 14, 17, 21]
    inputs = blob_images(rows, cols)
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        batch = saliencymix(
            inputs, torch.arange(8), alpha=1000.0, generator=generator, lambda_mode=lambda_mode
        )
        boxes = pasted_boxes(inputs, batch.inputs, batch.perm)
        assert boxes
        for i, (top, bottom, left, right) in boxes:
            # batch: the blob of the first image of the shuffled batch; sample: its own partner's.
            source = int(batch.perm[0] if lambda_mode == "batch" else batch.perm[i])
            assert (top + (bottom - top) // 2, left + (right - left) // 2) == (
                rows[source],
                cols[source],
            )
            share = 1 - (bottom - top) * (right - left) / 32**2
            assert batch.lam[i].item() == pytest.approx(share, abs=1e-6)
        if lambda_mode == "sample":
            assert len({box for _, box in boxes}) > 1


@pytest.mark.parametrize("detector", ["fine_grained", "spectral_residual"])
def test_batch_mode_shares_lambda_and_box_and_lambda_is_the_pixel_share(detector):
    n, height, width = 16, 24, 20
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.rand(n, 3, height, width, generator=generator)
        inputs += torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)  # tells images apart
        batch = saliencymix(
            inputs, torch.arange(n), alpha=0.5, generator=generator, detector=detector
        )
        assert batch.lam.shape == (n,) and (batch.lam == batch.lam[0]).all()
        from_b = (batch.inputs == inputs[batch.perm]).all(dim=1)
        distinct = batch.perm != torch.arange(n)
        assert (from_b[distinct] == from_b[distinct][0]).all()  # one box, the same place
        share_a = 1 - from_b.float().mean(dim=(1, 2))
        torch.testing.assert_close(share_a[distinct], batch.lam[distinct], atol=1e-6, rtol=0)


def test_the_spectral_residual_option_finds_planted_blobs_per_sample():
    images = torch.zeros(3, 3, 64, 48)
    blobs = [(10, 12), (40, 30), (55, 5)]
    for i, (row, col) in enumerate(blobs):
        images[i, :, row - 2 : row + 3, col - 2 : col + 3] = 1.0
    rows, cols = saliency.salient_points(images, "spectral_residual")
    for i, (row, col) in enumerate(blobs):
        assert abs(rows[i].item() - row) <= 3 and abs(cols[i].item() - col) <= 3

    n = 16
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=generator) * 0.05
    rows_t = torch.randint(4, 28, (n,), generator=generator)
    cols_t = torch.randint(4, 28, (n,), generator=generator)
    for i in range(n):
        images[i, :, rows_t[i] - 1 : rows_t[i] + 2, cols_t[i] - 1 : cols_t[i] + 2] = 1.0
    batch = saliencymix(
        images,
        torch.arange(n),
        alpha=1.0,
        generator=generator,
        lambda_mode="sample",
        detector="spectral_residual",
    )
    for i in range(n):
        j = int(batch.perm[i])
        if batch.lam[i] < 0.9:  # a box of at least 10% of the image
            pixel = batch.inputs[i, :, rows_t[j], cols_t[j]]
            torch.testing.assert_close(pixel, images[j, :, rows_t[j], cols_t[j]])


def test_an_unknown_detector_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match=r"'opencv'.*allowed: fine_grained, spectral_residual"):
        saliencymix(
            torch.rand(2, 3, 8, 8),
            torch.arange(2),
            alpha=1.0,
            generator=torch.Generator(),
            detector="opencv",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="lambda_mode"):
        saliencymix(
            torch.rand(2, 3, 8, 8),
            torch.arange(2),
            alpha=1.0,
            generator=torch.Generator(),
            lambda_mode="pixel",  # type: ignore[arg-type]
        )


@pytest.mark.gpu
def test_fine_grained_map_on_cuda_equals_the_cpu_map_without_host_sync():
    """Integer steps and IEEE float32 division: the device must give the very same map."""
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 64, 64, generator=generator)
    expected = saliency.fine_grained_saliency(images)
    on_device = images.cuda()
    saliency.fine_grained_saliency(on_device)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = saliency.fine_grained_saliency(on_device)
        points = saliency.salient_points(on_device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)
    rows, cols = saliency.salient_points(images)
    assert points[0].cpu().tolist() == rows.tolist() and points[1].cpu().tolist() == cols.tolist()
