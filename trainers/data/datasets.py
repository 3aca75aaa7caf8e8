"""The data sets a sweep can name, and :func:`open_dataset`, the one way the loop opens one."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.data.base import SPLITS, ImageSource
from trainers.data.buckets import is_bucket_uri
from trainers.data.cifar import CIFAR_SPLITS, IMAGE_SIZE, load_cifar
from trainers.data.classes import class_indices, keep_classes
from trainers.data.imagefolder import ImageFiles, hold, list_imagefolder
from trainers.data.parquet import ParquetShards
from trainers.data.sampling import label_fraction as keep_labels
from trainers.data.sampling import subset as keep_images
from trainers.data.sampling import subset_indices
from trainers.data.synthetic import synthetic as make_synthetic

ROOT_VARIABLE = "DMSWEEP_DATA_ROOT"
SOURCES = ("synthetic", "cifar", "imagefolder", "parquet")
# The splits each source can have (an ImageFolder or Parquet data set may lack some of them).
SOURCE_SPLITS = {
    "synthetic": SPLITS,
    "cifar": CIFAR_SPLITS,
    "imagefolder": SPLITS,
    "parquet": SPLITS,
}
SYNTHETIC_IMAGES = {"train": 5000, "val": 1000, "test": 1000}
SYNTHETIC_OPTIONS = ("num_classes", "images", "noise", "distractor", "max_shift")


@dataclass(frozen=True)
class DatasetInfo:
    """What dmsweep knows about a data set before opening it.

    ``image_size`` is the native size (CIFAR, Tiny-ImageNet) or the training size (224 px for
    the photo data sets). ``train_images``: the published train split's size (what a trial
    trains on per epoch, before ``subset`` and ``label_fraction``; ``dmsweep plan`` counts with
    it); synthetic data's is its default, ``SYNTHETIC_IMAGES["train"]``. ``originals``: the
    images are photos of varying size, kept as they are and cropped per sample from the whole
    original (Table 10's RandomResizedCrop, and the shorter side resized to image_size /
    crop_pct then centre-cropped at test time).
    """

    num_classes: int
    default_source: str
    image_size: int
    sources: tuple[str, ...]
    train_images: int
    originals: bool = False


_FILES = ("imagefolder", "parquet")
DATASETS: dict[str, DatasetInfo] = {
    # CIFAR-10 and CIFAR-100: 50,000 train and 10,000 test images each (Krizhevsky, "Learning
    # Multiple Layers of Features from Tiny Images", 2009; www.cs.toronto.edu/~kriz/cifar.html).
    "cifar10": DatasetInfo(10, "cifar", 32, ("cifar", *_FILES), train_images=50_000),
    "cifar100": DatasetInfo(100, "cifar", 32, ("cifar", *_FILES), train_images=50_000),
    # Tiny-ImageNet: 500 train images per class x 200 classes (CS231n's tiny-imagenet-200 README).
    "tiny_imagenet": DatasetInfo(200, "imagefolder", 64, _FILES, train_images=100_000),
    # CUB-200-2011: 5,994 train / 5,794 test images (Wah et al., 2011, CNS-TR-2011-001).
    "cub200": DatasetInfo(200, "imagefolder", 224, _FILES, train_images=5_994, originals=True),
    # FGVC-Aircraft: trainval 6,667 / test 3,333 images (Maji et al., 2013, arXiv:1306.5151).
    "aircraft": DatasetInfo(100, "imagefolder", 224, _FILES, train_images=6_667, originals=True),
    # Stanford Cars: 8,144 train / 8,041 test images (Krause et al., 3dRR 2013).
    "cars": DatasetInfo(196, "imagefolder", 224, _FILES, train_images=8_144, originals=True),
    # ImageNet-1k (ILSVRC 2012): 1,281,167 train / 50,000 val images (Russakovsky et al.,
    # "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015).
    "imagenet": DatasetInfo(
        1000, "imagefolder", 224, _FILES, train_images=1_281_167, originals=True
    ),
    # Classes, size and images come from the arguments; these are the defaults.
    "synthetic": DatasetInfo(
        10, "synthetic", 32, ("synthetic",), train_images=SYNTHETIC_IMAGES["train"]
    ),
}


def is_synthetic(name: str, source: str | None = None) -> bool:
    """Whether a data set is made in memory (and so needs no root)."""
    return name == "synthetic" or source == "synthetic"


def default_root(name: str, base: str | Path | None = None) -> Path:
    """``<base>/<name>``, base defaulting to ``$DMSWEEP_DATA_ROOT``; an error when neither is set.

    The one rule for where a data set without a root lives: a local run's ``$DMSWEEP_DATA_ROOT``,
    the sweep service's first data root (``base``).
    """
    base = base or os.environ.get(ROOT_VARIABLE)
    if not base:
        raise ValueError(
            f"no root given for data set {name!r} and {ROOT_VARIABLE} is not set: give its root, "
            f"or set {ROOT_VARIABLE} to the folder that holds {name}/"
        )
    return Path(base).expanduser() / name


def resolve_root(name: str, root: str | None, base: str | Path | None = None) -> Path:
    """A data set's folder: ``root`` when given, else ``default_root(name, base)``."""
    return Path(root).expanduser() if root else default_root(name, base)


def resolve_weights(value: str, base: str | Path | None = None) -> Path:
    """A weights file: ``value`` when absolute, else under ``base`` (``$DMSWEEP_DATA_ROOT``).

    The rule the sweep service applies with its first data root
    (``service.spec.path_policy.resolve_paths``), for a local run; without a base a relative
    path stays relative to the working folder.
    """
    path = Path(value).expanduser()
    base = base or os.environ.get(ROOT_VARIABLE)
    if path.is_absolute() or not base or is_bucket_uri(str(base)):
        return path
    return Path(base).expanduser() / path


def data_location(name: str, root: str | None, base: str | Path | None = None) -> Path | str:
    """As ``resolve_root``, but a bucket prefix (``s3://...``) stays a URI string.

    The root, or ``<base>/<name>`` where the base (``$DMSWEEP_DATA_ROOT`` by default) may be a
    bucket prefix too. A bucket holds Parquet shards only (``open_dataset`` says so).
    """
    if root and is_bucket_uri(root):
        return root.rstrip("/")
    if not root:
        base = base or os.environ.get(ROOT_VARIABLE)
        if base and is_bucket_uri(str(base)):
            return f"{str(base).rstrip('/')}/{name}"
    return resolve_root(name, root, base)


def _synthetic(
    split: str, image_size: int | None, seed: int, options: Mapping[str, Any] | None
) -> ImageSource:
    options = dict(options or {})
    unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown synthetic option(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(SYNTHETIC_OPTIONS)}"
        )
    images = options.pop("images", None) or {}
    count = images if isinstance(images, int) else {**SYNTHETIC_IMAGES, **images}[split]
    return make_synthetic(
        count,
        split=split,
        num_classes=options.pop("num_classes", None) or DATASETS["synthetic"].num_classes,
        image_size=image_size or DATASETS["synthetic"].image_size,
        seed=seed,
        **options,
    )


def _fixed_size(name: str, source: str, found: int, image_size: int | None) -> None:
    if image_size is not None and image_size != found:
        raise ValueError(
            f"{name} from the {source} source has {found} px images; image_size={image_size} "
            f"is not available (leave it unset or {found}; resize on the device instead)"
        )


def open_dataset(
    name: str,
    split: str,
    *,
    source: str | None = None,
    root: str | Path | None = None,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    subset: int | None = None,
    label_fraction: float | int | None = None,
    seed: int = 0,
    in_memory: bool | None = None,
    synthetic: Mapping[str, Any] | None = None,
) -> ImageSource:
    """One split of a data set of :data:`DATASETS`, as an :class:`ImageSource`.

    ``source`` defaults to the data set's own (:class:`DatasetInfo`); ``root`` to
    ``$DMSWEEP_DATA_ROOT/<name>`` (synthetic data needs none). ``image_size`` is the load size
    of ImageFolder data (default: the data set's); CIFAR and Parquet images have a fixed size.
    ``classes`` keeps the images of those classes only, labelled by their position in it, in
    every split (a name the split lacks is an error listing its classes). ``subset`` then
    ``label_fraction`` are applied to the train split only, drawn with ``seed`` (the same
    arguments can open every split). ``in_memory`` forces how an ImageFolder split is
    held (see :mod:`trainers.data.imagefolder`; the photo data sets, ``DatasetInfo.originals``,
    stay lazy by default, their files as they are). ``synthetic`` holds the synthetic data set's
    options: ``num_classes``, ``images`` (a count, or counts per split, default train 5000,
    val and test 1000), ``noise``, ``distractor``, ``max_shift``.

    Everything that can be checked is checked here, before training: names, folders, files,
    labels (see the sources). A class count other than the data set's (a wrong folder, a
    trimmed copy) gives a warning, not an error, so that small copies stay usable.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    info = DATASETS[name]
    source = source or info.default_source
    if source not in info.sources:
        kind = "unknown source" if source not in SOURCES else "source"
        raise ValueError(
            f"{kind} {source!r} for data set {name!r}; allowed: {', '.join(info.sources)}"
        )
    if split not in SOURCE_SPLITS[source]:
        raise ValueError(
            f"unknown split {split!r} for the {source} source; allowed: "
            f"{', '.join(SOURCE_SPLITS[source])}"
        )
    if synthetic is not None and source != "synthetic":
        raise ValueError(f"synthetic options were given for data set {name!r}; only synthetic")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")

    data: ImageSource
    listed: int | None = None
    if source == "synthetic":
        data = _synthetic(split, image_size, seed, synthetic)
    else:
        location = data_location(name, str(root) if root is not None else None)
        if isinstance(location, str) and source != "parquet":
            raise ValueError(
                f"data set {name!r} is in a bucket ({location}): a bucket holds Parquet shards "
                f"only (source: parquet), not the {source} source's files"
            )
        if source == "cifar":
            assert isinstance(location, Path)  # a bucket was refused above
            _fixed_size(name, source, IMAGE_SIZE, image_size)
            data = load_cifar(location, name, split)
        elif source == "imagefolder":
            assert isinstance(location, Path)
            paths, labels, names = list_imagefolder(location, split)
            listed = len(names)  # the folder's classes, before any are dropped
            if classes is not None:
                # Drop the other classes' files before anything is decoded.
                kept, labels = class_indices(labels, names, classes, f"{name} {split} ({location})")
                paths, names = [paths[i] for i in kept.tolist()], list(classes)
                classes = None
            files = ImageFiles(paths, labels, names, image_size or info.image_size)
            if split == "train" and subset is not None:
                # Choose the subset from the labels, then decode only the kept files: the same
                # images as decoding all and then choosing, since the draw depends on labels only.
                keep = subset_indices(files, subset, seed)
                files = ImageFiles(
                    [paths[i] for i in keep.tolist()], labels[keep], names, files.image_size
                )
                subset = None
            data = hold(files, False if in_memory is None and info.originals else in_memory)
        else:
            data = ParquetShards(location, split)
            if data.encoding == "original" and image_size is not None:
                data.image_size = image_size  # originals can be cropped to any training size
            _fixed_size(name, source, data.image_size, image_size)
        listed = len(data.classes) if listed is None else listed
        if listed != info.num_classes:
            warnings.warn(
                f"{name} {split} in {location} has {listed} classes; {name} has {info.num_classes}",
                stacklevel=2,
            )
    if classes is not None:
        where = f"{name} {split}" if source == "synthetic" else f"{name} {split} ({location})"
        data = keep_classes(data, classes, where)
    if split == "train":
        if subset is not None:
            data = keep_images(data, subset, seed)
        if label_fraction is not None:
            data = keep_labels(data, label_fraction, seed)
    return data
