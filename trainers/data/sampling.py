"""Class-balanced subsets and label fractions, deterministic given a seed.

``subset`` keeps fewer training images (quick runs, learning curves); ``label_fraction`` keeps
every image but only some labels, for the paper's semi-supervised settings: 15 / 30 / 50 % of
the labels for transfer learning on CUB, Aircraft and Cars (Table 6), and 250 / 4000 labels on
CIFAR-10, 400 / 2500 / 10000 on CIFAR-100 (Table 7). Draws use a CPU ``torch.Generator``, so the
same seed picks the same images on every machine.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainers.data.base import ImageSet, ImageSource, SourceView


def balanced_counts(available: Tensor, total: int, generator: torch.Generator) -> Tensor:
    """How many of each class to keep: ``total`` in all, as equal per class as possible.

    Water-filling: every class gets the same share until a class runs out of images, the rest
    is shared among the others. What does not divide evenly goes to classes drawn at random.
    """
    if not 0 <= total <= int(available.sum()):
        raise ValueError(f"cannot keep {total} of {int(available.sum())} images")
    counts = torch.zeros_like(available)
    remaining = total
    while remaining:
        open_classes = (counts < available).nonzero().squeeze(1)
        share = remaining // len(open_classes)
        if share == 0:
            lucky = open_classes[torch.randperm(len(open_classes), generator=generator)]
            counts[lucky[:remaining]] += 1
            break
        added = torch.minimum(available[open_classes] - counts[open_classes], torch.tensor(share))
        counts[open_classes] += added
        remaining -= int(added.sum())
    return counts


def _pick(labels: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Sorted indices: ``counts[c]`` images of class c, drawn at random."""
    chosen = []
    for cls in range(len(counts)):
        members = (labels == cls).nonzero().squeeze(1)
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[: int(counts[cls])]])
    return torch.cat(chosen).sort().values


def _class_sizes(source: ImageSource) -> Tensor:
    labels = source.labels
    return torch.bincount(labels[labels >= 0], minlength=len(source.classes))


def subset_indices(source: ImageSource, n: int, seed: int = 0) -> Tensor:
    """The sorted indices :func:`subset` keeps: a draw that depends on the labels only."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(source):
        raise ValueError(f"subset must be an integer in 1..{len(source)} (the images), got {n!r}")
    if bool((source.labels < 0).any()):
        raise ValueError("subset needs every image labelled; take the subset before label_fraction")
    generator = torch.Generator().manual_seed(seed)
    counts = balanced_counts(_class_sizes(source), n, generator)
    return _pick(source.labels, counts, generator)


def subset(source: ImageSource, n: int, seed: int = 0) -> ImageSource:
    """``n`` images of ``source``, class-balanced, in their original order.

    An :class:`ImageSet` gives an ImageSet (the kept images copied); any other source a view
    that reads through to it.
    """
    keep = subset_indices(source, n, seed)
    if isinstance(source, ImageSet):
        return ImageSet(source.images[keep], source.labels[keep], list(source.classes))
    if isinstance(source, SourceView):  # a view of a view reads straight from the base
        return SourceView(source.base, source.indices[keep], source.labels[keep], source.classes)
    return SourceView(source, keep, source.labels[keep])


def label_fraction(source: ImageSource, amount: float | int, seed: int = 0) -> ImageSource:
    """``source`` with labels kept for a fraction or a count of its images, -1 for the rest.

    ``amount <= 1`` is a fraction: each class keeps round(amount * its size) labels (at least
    one), so class proportions stay as they are (15 % of CUB: 4 or 5 of each class's ~30).
    ``amount > 1`` is a count (a whole number): that many labels in all, as equal per class as
    possible (250 labels over CIFAR-10's 10 classes: 25 each). Images already without a label
    stay without one. Every image is kept, in its order; the images are not copied.
    """
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not amount > 0:
        raise ValueError(
            f"label_fraction must be a fraction in (0, 1] or a count of labels > 1, got {amount!r}"
        )
    available = _class_sizes(source)
    generator = torch.Generator().manual_seed(seed)
    if amount <= 1:
        counts = torch.clamp(torch.floor(available * float(amount) + 0.5), min=1).long()
        counts = torch.minimum(counts, available)
    else:
        if not float(amount).is_integer() or amount > int(available.sum()):
            raise ValueError(
                f"label_fraction {amount!r} > 1 is a count of labels: it must be a whole number "
                f"<= {int(available.sum())} (the labelled images)"
            )
        counts = balanced_counts(available, math.floor(amount), generator)
    keep = _pick(source.labels, counts, generator)
    labels = torch.full_like(source.labels, -1)
    labels[keep] = source.labels[keep]
    if isinstance(source, ImageSet):
        return ImageSet(source.images, labels, list(source.classes))
    if isinstance(source, SourceView):
        return SourceView(source.base, source.indices, labels, source.classes)
    return SourceView(source, torch.arange(len(source)), labels)
