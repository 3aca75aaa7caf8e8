"""Class-balanced subsets and label fractions: counts, balance, determinism, the paper's values."""

from __future__ import annotations

import pytest
import torch

from trainers.data import ImageSet, SourceView, label_fraction, subset
from trainers.data.imagefolder import ImageFiles
from trainers.data.sampling import balanced_counts


def labels_only(per_class: list[int]) -> ImageSet:
    """Tiny images (the pixel of image i is i % 256), labels interleaved across classes."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    return ImageSet(images.contiguous(), labels, [f"c{i}" for i in range(len(per_class))])


def counts_of(data) -> list[int]:
    labels = data.labels[data.labels >= 0]
    return torch.bincount(labels, minlength=len(data.classes)).tolist()


def test_subset_is_class_balanced_and_deterministic():
    data = labels_only([100] * 10)
    small = subset(data, 250, seed=0)
    assert isinstance(small, ImageSet) and len(small) == 250 and counts_of(small) == [25] * 10
    uneven = subset(data, 253, seed=0)
    assert sorted(counts_of(uneven)) == [25] * 7 + [26] * 3 and len(uneven) == 253
    again = subset(data, 250, seed=0)
    other = subset(data, 250, seed=1)
    assert torch.equal(small.images, again.images) and torch.equal(small.labels, again.labels)
    assert not torch.equal(small.images, other.images)
    # The kept images carry their own labels (image i's pixel value is i % 256).
    kept = small.images[:, 0, 0, 0].long()
    assert all(int(data.labels[data.images[:, 0, 0, 0].long() == v][0]) >= 0 for v in kept[:5])


def test_subset_of_unequal_classes_fills_the_small_ones_first():
    data = labels_only([5, 50, 50])
    assert counts_of(subset(data, 65, seed=3)) == [5, 30, 30]
    assert counts_of(subset(data, 105, seed=3)) == [5, 50, 50]
    assert balanced_counts(torch.tensor([5, 50, 50]), 16, torch.Generator()).tolist() == [5, 6, 5]


@pytest.mark.parametrize(
    ("classes", "per_class", "labels", "expected"),
    [
        (10, 500, 250, 25),  # CIFAR-10, 250 labels
        (10, 500, 4000, 400),  # CIFAR-10, 4000 labels
        (100, 100, 400, 4),  # CIFAR-100, 400 labels
        (100, 100, 2500, 25),  # CIFAR-100, 2500 labels
        (100, 100, 10000, 100),  # CIFAR-100, 10000 labels (every image of this small copy)
    ],
)
def test_label_counts_of_the_paper(classes, per_class, labels, expected):
    data = labels_only([per_class] * classes)
    partial = label_fraction(data, labels, seed=0)
    assert counts_of(partial) == [expected] * classes
    assert int((partial.labels == -1).sum()) == classes * per_class - labels


@pytest.mark.parametrize(("fraction", "expected"), [(0.15, 15), (0.3, 30), (0.5, 50), (1.0, 100)])
def test_label_fractions_of_the_paper(fraction, expected):
    data = labels_only([100] * 6)
    partial = label_fraction(data, fraction, seed=0)
    assert counts_of(partial) == [expected] * 6


def test_label_fraction_keeps_every_image_and_the_true_labels():
    data = labels_only([30, 29, 30])  # like a CUB class or two
    partial = label_fraction(data, 0.15, seed=4)
    assert partial.images is data.images and len(partial) == len(data)
    assert counts_of(partial) == [5, 4, 5]  # round(0.15 * 30) = 5 (4.5 up), round(4.35) = 4
    kept = partial.labels >= 0
    assert torch.equal(partial.labels[kept], data.labels[kept])
    again = label_fraction(data, 0.15, seed=4)
    other = label_fraction(data, 0.15, seed=5)
    assert torch.equal(partial.labels, again.labels)
    assert not torch.equal(partial.labels, other.labels)
    # A count as a whole float (a YAML 250.0) is a count too; 1 is every label.
    assert counts_of(label_fraction(data, 30.0, seed=0)) == [10, 10, 10]
    assert counts_of(label_fraction(data, 1, seed=0)) == [30, 29, 30]
    # Images already without a label stay without one.
    assert counts_of(label_fraction(partial, 0.5, seed=0)) == [3, 2, 3]  # 2.5 rounds up


def test_bad_amounts_are_refused_with_what_is_allowed():
    data = labels_only([10, 10])
    for amount in (0, -0.5, True, "10"):
        with pytest.raises(ValueError, match="label_fraction must be a fraction in"):
            label_fraction(data, amount, seed=0)
    with pytest.raises(ValueError, match=r"label_fraction 2\.5 > 1 is a count of labels: it must"):
        label_fraction(data, 2.5, seed=0)
    with pytest.raises(ValueError, match="whole number <= 20"):
        label_fraction(data, 21, seed=0)
    for n in (0, 21, 2.0):
        with pytest.raises(ValueError, match=r"subset must be an integer in 1\.\.20"):
            subset(data, n, seed=0)
    with pytest.raises(ValueError, match="take the subset before label_fraction"):
        subset(label_fraction(data, 4, seed=0), 5, seed=0)


def test_lazy_sources_give_views_that_read_through(tmp_path):
    from PIL import Image

    files = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (4, 4), (i * 10, 0, 0)).save(path)
        files.append(path)
    lazy = ImageFiles(files, torch.tensor([0, 1] * 4), ["a", "b"], 4)
    view = subset(lazy, 4, seed=0)
    assert isinstance(view, SourceView) and len(view) == 4 and view.image_size == 4
    assert counts_of(view) == [2, 2]
    red = view.read(torch.arange(4))[:, 0, 0, 0]
    assert torch.equal(red.long() // 10, view.indices)
    partial = label_fraction(view, 2, seed=0)
    assert isinstance(partial, SourceView) and partial.base is lazy and counts_of(partial) == [1, 1]
    assert torch.equal(partial.read([1]), view.read([1]))
    smaller = subset(view, 2, seed=0)  # a view of a view reads straight from the files
    assert smaller.base is lazy and torch.equal(smaller.read([0, 1]), lazy.read(smaller.indices))
