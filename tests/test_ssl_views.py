"""The semi-supervised views (weak, strong) and the two image streams, against hand truth."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainers.augment import CIFAR10_MEAN, CIFAR10_STD
from trainers.data.base import to_pil
from trainers.ssl.streams import Stream
from trainers.ssl.views import CUTOUT_FILL, OPERATIONS, Views, cutout, rand_augment, strong_pixels


class _Centred(random.Random):
    """A Random whose ``uniform`` always answers the middle of the range (a known centre)."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def test_cutout_paints_the_box_pil_draws_inclusively_in_grey():
    # A 32 px black image, side 0.25 (8 px) centred at (16, 16): x0 = y0 = 16 - 4 = 12 and
    # PIL's rectangle covers 12..20 inclusive on both axes, 9 x 9 = 81 pixels.
    black = to_pil(torch.zeros(3, 32, 32, dtype=torch.uint8))
    painted = torch.from_numpy(np.array(cutout(black, 0.25, _Centred())))
    grey = (painted == torch.tensor(CUTOUT_FILL)).all(dim=2)
    assert int(grey.sum()) == 81
    assert bool(grey[12:21, 12:21].all())
    assert cutout(black, 0.0, _Centred()) is black


def test_fixmatch_randaugment_has_its_14_operations_and_keeps_size_and_mode():
    assert len(OPERATIONS) == 14
    image = to_pil(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    for name, operation, low, high in OPERATIONS:
        for value in (low, high):
            out = operation(image, value)
            assert (out.size, out.mode) == ((32, 32), "RGB"), name


def test_the_strong_view_is_a_function_of_its_seed():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    first = strong_pixels(images, seed=3)
    assert torch.equal(first, strong_pixels(images, seed=3))
    assert not torch.equal(first, strong_pixels(images, seed=4))
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert not torch.equal(first, images)  # three operations and a cutout changed something
    image = to_pil(images[0])
    assert np.array_equal(
        np.asarray(rand_augment(image, random.Random(9))),
        np.asarray(rand_augment(image, random.Random(9))),
    )


def test_the_weak_view_of_a_flat_image_is_the_normalised_colour():
    # Flip, reflect-padded shift: a constant image stays constant, so each channel is
    # (value / 255 - mean) / std exactly.
    views = Views(32, CIFAR10_MEAN, CIFAR10_STD)
    images = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    out = views.weak(images, torch.Generator().manual_seed(0))
    expected = (200 / 255 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    assert out.shape == (4, 3, 32, 32)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-6)


def test_the_weak_view_shifts_by_at_most_an_eighth_of_the_side():
    # A single bright column at x = 16: after a flip and a shift of at most 4 px it lies in
    # 16 +- 4 (or its mirror 15 +- 4), never further.
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, 16] = 255
    out = Views(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).weak(images, torch.Generator().manual_seed(1))
    columns = out[:, 0].amax(dim=1).argmax(dim=1)
    assert int(columns.min()) >= 11 and int(columns.max()) <= 20
    assert len(set(columns.tolist())) > 4  # the shifts vary


def test_views_refuse_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown view 'medium'; allowed: weak, strong"):
        Views(32, CIFAR10_MEAN, CIFAR10_STD)(
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
            "medium",
            torch.Generator(),
            torch.Generator(),
        )


def test_a_stream_visits_every_image_once_per_pass_and_is_a_function_of_the_step():
    stream = Stream(10, seed=5)
    first_pass = torch.cat([stream.batch(step, 2, 0, 1) for step in range(5)])
    assert sorted(first_pass.tolist()) == list(range(10))
    # A batch that crosses into the next pass: 3 of pass 0's end, then pass 1's start.
    crossing = Stream(10, seed=5).take(7, 6)
    assert crossing[:3].tolist() == first_pass[7:].tolist()
    assert len(set(crossing[3:].tolist())) == 3
    # Any step can be asked first (a resumed run): the same images.
    assert torch.equal(Stream(10, seed=5).batch(3, 2, 0, 1), stream.batch(3, 2, 0, 1))
    assert not torch.equal(Stream(10, seed=6).take(0, 10), first_pass)


def test_ranks_split_each_global_batch_between_them():
    one = Stream(12, seed=0)
    for step in range(4):
        shares = [Stream(12, seed=0).batch(step, 3, rank, 2) for rank in range(2)]
        assert torch.equal(torch.cat(shares), one.batch(step, 6, 0, 1))


def test_a_stream_needs_an_image():
    with pytest.raises(ValueError, match="at least one image"):
        Stream(0, seed=0)
