"""Some classes of a data set: the images of the named classes, labels re-indexed 0..k-1.

What transfer learning on one data set needs: a source task on some classes and a target task
on the others (``DataSettings.classes``; ``search_spaces/tl_quick.yaml`` pretrains on five
CIFAR-10 classes and transfers to the other five). The kept classes are in the order given, so
a label is an index into that list, the same in every split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trainers.data.base import ImageSet, ImageSource, SourceView


def check_class_names(names: Sequence[str], available: Sequence[str], where: str) -> None:
    """A ValueError unless ``names`` are distinct and each is one of ``available``.

    The message lists what ``where`` (a data set's split) has, so that a misspelt name is
    corrected without opening the data set by hand.
    """
    if not names:
        raise ValueError("classes: give at least one class name")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ValueError(f"classes: {', '.join(repeated)} given more than once")
    unknown = [name for name in names if name not in set(available)]
    if unknown:
        raise ValueError(
            f"classes: {', '.join(map(repr, unknown))} not in {where}; its classes are: "
            f"{', '.join(available)}"
        )


def class_indices(
    labels: Tensor, classes: Sequence[str], names: Sequence[str], where: str
) -> tuple[Tensor, Tensor]:
    """The sorted indices of the images of ``names``, and their labels as indices into ``names``.

    ``labels`` index into ``classes``; every image must be labelled (classes are chosen before
    ``label_fraction`` drops any label), since an image without a label has no class to keep.
    """
    check_class_names(names, classes, where)
    if bool((labels < 0).any()):
        raise ValueError("classes needs every image labelled; choose classes before label_fraction")
    # old label -> new label (-1: a class not kept); one lookup for every image.
    remap = torch.full((len(classes),), -1, dtype=torch.long)
    for new, name in enumerate(names):
        remap[list(classes).index(name)] = new
    new_labels = remap[labels.to(torch.long)]
    keep = (new_labels >= 0).nonzero().squeeze(1)
    return keep, new_labels[keep]


def keep_classes(source: ImageSource, names: Sequence[str], where: str = "the data") -> ImageSource:
    """The images of ``source`` whose class is one of ``names``, labelled by position in ``names``.

    Images keep their order. An :class:`ImageSet` gives an ImageSet (the kept images copied);
    any other source a view that reads through to it, naming ``names`` as its classes.
    """
    keep, labels = class_indices(source.labels, source.classes, names, where)
    if isinstance(source, ImageSet):
        return ImageSet(source.images[keep], labels, list(names))
    if isinstance(source, SourceView):  # a view of a view reads straight from the base
        return SourceView(source.base, source.indices[keep], labels, names)
    return SourceView(source, keep, labels, names)
