"""Convert a data set from its published layout into an ImageFolder or Parquet shards.

:func:`prepare` is the one entry point (``dmsweep data prepare``). The output is what
:func:`~trainers.data.datasets.open_dataset` reads: ``out/train/<class>/<file>`` and
``out/test/<class>/<file>`` (files copied, never linked: the output may move to a shared
volume), or ``out/train-00000.parquet``, ... and ``out/test-00000.parquet``, ....

Layouts, and the files each one needs (``src`` may be the published folder or its parent):

* ``cifar10`` / ``cifar100``: the python pickles (``cifar-10-batches-py`` /
  ``cifar-100-python``, see :mod:`trainers.data.cifar`); ImageFolder output is lossless PNG.
* ``tiny_imagenet`` (``tiny-imagenet-200``): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
  ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file, wnid, box; tab-separated).
  The labelled val set becomes ``test`` (the unlabelled test set is left out), as in the paper.
* ``cub200`` (``CUB_200_2011``): ``images/<class>/*.jpg``, ``images.txt`` (id, path under
  images/), ``image_class_labels.txt`` (id, class id from 1), ``train_test_split.txt`` (id,
  1 for train), ``classes.txt`` (class id, name such as ``001.Black_footed_Albatross``).
* ``aircraft`` (``fgvc-aircraft-2013b``): ``data/images/<id>.jpg``, ``data/variants.txt``,
  ``data/images_variant_trainval.txt`` (train) and ``data/images_variant_test.txt`` (test),
  lines ``<id> <variant name, may hold spaces>``. The 100 variants are the classes.
* ``cars`` (Stanford Cars): ``cars_train/*.jpg`` and ``cars_test/*.jpg`` (or the same nested
  once more, ``cars_train/cars_train/``), and the annotations in one of two forms, looked for in
  ``src`` and ``src/devkit``:

  - text (the form commonly redistributed, and the one to use without scipy): ``names.csv`` (or
    ``names.txt``), one class name per line in class-id order; ``anno_train.csv`` and
    ``anno_test.csv``, lines ``<file>,<x1>,<y1>,<x2>,<y2>,<class id from 1>``, no header needed;
  - the devkit's MATLAB files ``cars_meta.mat``, ``cars_train_annos.mat`` and
    ``cars_test_annos_withlabels.mat``, read with ``scipy.io.loadmat`` (scipy comes with
    MLflow; an error says so where it is missing).

* ``imagefolder``: already ``src/<split>/<class>/*``; copied, or written as shards.

Class folder names: the data set's own (wnid, CUB's ``001.Black_footed_Albatross``); for
Aircraft and Cars the class id (from 1, three digits) then the name, e.g. ``001.707-320`` and
``001.AM General Hummer SUV 2000``, so that sorted folders keep the official label order; a
``/`` in a name (``F-16A/B``, ``Ram C/V Cargo Van``) becomes ``_``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainers.data.base import SPLITS, ImageSet, ImageSource
from trainers.data.cifar import CIFAR_LAYOUTS, CIFAR_SPLITS, load_cifar
from trainers.data.datasets import DATASETS
from trainers.data.imagefolder import (
    ImageFiles,
    is_image_file,
    list_imagefolder,
    parallel_fill,
)
from trainers.data.parquet import ENCODINGS, find_shards, write_parquet_shards

LAYOUTS = ("cifar10", "cifar100", "tiny_imagenet", "cub200", "aircraft", "cars", "imagefolder")
FORMATS = ("imagefolder", "parquet")


@dataclass(frozen=True)
class Listing:
    """A data set as files: class folder names in label order, (file, label) per split."""

    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]


def folder_name(name: str) -> str:
    """A class name as a folder name: no path separators, never hidden."""
    cleaned = name.strip().replace("/", "_").replace("\\", "_")
    return "_" + cleaned if cleaned.startswith(".") or not cleaned else cleaned


def _numbered(names: list[str]) -> list[str]:
    return [f"{i:03d}.{folder_name(name)}" for i, name in enumerate(names, start=1)]


def _find(src: Path, marker: str, folders: tuple[str, ...]) -> Path:
    """The layout's root: ``src`` or one of ``src/<folder>``, the one holding ``marker``."""
    for root in (src, *(src / f for f in folders)):
        if (root / marker).exists():
            return root
    if not src.exists():
        raise FileNotFoundError(f"source folder {src} does not exist")
    looked = [str(src / marker), *(str(src / f / marker) for f in folders)]
    raise FileNotFoundError(f"not the expected layout: none of {', '.join(looked)} exists")


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a text file with their line numbers (from 1)."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} is missing")
    text = path.read_text(encoding="utf-8")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _fields(path: Path, count: int, sep: str | None = None) -> list[tuple[int, list[str]]]:
    """Lines split into exactly ``count`` fields (the last one keeps any extra separators)."""
    rows = []
    for number, line in _lines(path):
        parts = line.split(sep, count - 1)
        if len(parts) != count:
            raise ValueError(f"{path} line {number}: expected {count} fields, got {line!r}")
        rows.append((number, [p.strip() for p in parts]))
    return rows


def _int(value: str, path: Path, number: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path} line {number}: {value!r} is not an integer") from None


def _class_id(value: str, count: int, path: Path, number: int) -> int:
    """A class id counted from 1, checked, as a label counted from 0."""
    class_id = _int(value, path, number)
    if not 1 <= class_id <= count:
        raise ValueError(
            f"{path} line {number}: class id {class_id} is outside 1..{count} (the classes)"
        )
    return class_id - 1


def list_tiny_imagenet(src: Path) -> Listing:
    """Tiny-ImageNet: train as published, the labelled val set as test."""
    root = _find(src, "wnids.txt", ("tiny-imagenet-200",))
    wnids = [line for _, line in _lines(root / "wnids.txt")]
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    train = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"train folder {folder} of class {wnid} is missing")
        train += [(f, label_of[wnid]) for f in sorted(folder.iterdir()) if is_image_file(f.name)]
    annotations = root / "val" / "val_annotations.txt"
    test = []
    for number, (file, wnid, _) in _fields(annotations, 3, "\t"):
        if wnid not in label_of:
            raise ValueError(f"{annotations} line {number}: {wnid!r} is not in wnids.txt")
        test.append((root / "val" / "images" / file, label_of[wnid]))
    return Listing(wnids, {"train": train, "test": sorted(test)})


def list_cub200(src: Path) -> Listing:
    """CUB-200-2011 with its official train/test split."""
    root = _find(src, "images.txt", ("CUB_200_2011",))
    classes = [name for _, (_, name) in _fields(root / "classes.txt", 2)]
    paths = {i: p for _, (i, p) in _fields(root / "images.txt", 2)}
    label_file = root / "image_class_labels.txt"
    labels = {i: _class_id(c, len(classes), label_file, n) for n, (i, c) in _fields(label_file, 2)}
    split_file = root / "train_test_split.txt"
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for number, (image_id, is_train) in _fields(split_file, 2):
        if image_id not in paths or image_id not in labels:
            raise ValueError(
                f"{split_file} line {number}: image id {image_id} is missing from images.txt "
                "or image_class_labels.txt"
            )
        if is_train not in ("0", "1"):
            raise ValueError(f"{split_file} line {number}: expected 0 or 1, got {is_train!r}")
        split = "train" if is_train == "1" else "test"
        splits[split].append((root / "images" / paths[image_id], labels[image_id]))
    return Listing([folder_name(c) for c in classes], splits)


def list_aircraft(src: Path) -> Listing:
    """FGVC-Aircraft at the variant level (100 classes): trainval as train, test as test."""
    root = _find(src, "data/variants.txt", ("fgvc-aircraft-2013b",))
    data = root / "data"
    variants = [line for _, line in _lines(data / "variants.txt")]
    label_of = {v: i for i, v in enumerate(variants)}
    splits = {}
    for split, part in (("train", "trainval"), ("test", "test")):
        path = data / f"images_variant_{part}.txt"
        entries = []
        for number, (image_id, variant) in _fields(path, 2):
            if variant not in label_of:
                raise ValueError(f"{path} line {number}: {variant!r} is not in variants.txt")
            entries.append((data / "images" / f"{image_id}.jpg", label_of[variant]))
        splits[split] = entries
    return Listing(_numbered(variants), splits)


def _cars_text(folders: list[Path]) -> tuple[list[str], dict[str, list[tuple[str, int]]]] | None:
    for folder in folders:
        names = next(
            (folder / n for n in ("names.csv", "names.txt") if (folder / n).is_file()), None
        )
        if names is None or not (folder / "anno_train.csv").is_file():
            continue
        classes = [line for _, line in _lines(names)]
        annotations = {}
        for split in ("train", "test"):
            path = folder / f"anno_{split}.csv"
            rows = []
            for position, (number, line) in enumerate(_lines(path)):
                fields = [f.strip() for f in line.split(",")]
                if position == 0 and len(fields) == 6 and not fields[5].isdigit():
                    continue  # a header row (file,x1,y1,x2,y2,class)
                if len(fields) != 6:
                    raise ValueError(
                        f"{path} line {number}: expected <file>,<x1>,<y1>,<x2>,<y2>,<class id>, "
                        f"got {line!r}"
                    )
                rows.append((fields[0], _class_id(fields[5], len(classes), path, number)))
            annotations[split] = rows
        return classes, annotations
    return None


def _cars_mat(folders: list[Path]) -> tuple[list[str], dict[str, list[tuple[str, int]]]] | None:
    def find(name: str) -> Path | None:
        return next((f / name for f in folders if (f / name).is_file()), None)

    meta = find("cars_meta.mat")
    if meta is None:
        return None
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(
            f"reading {meta} needs scipy; install it, or use the text annotations "
            "(names.csv, anno_train.csv, anno_test.csv; see trainers.data.layouts)"
        ) from None
    classes = [str(n) for n in np.atleast_1d(loadmat(meta, squeeze_me=True)["class_names"])]
    annotations = {}
    for split, name in (
        ("train", "cars_train_annos.mat"),
        ("test", "cars_test_annos_withlabels.mat"),
    ):
        path = find(name)
        if path is None:
            raise FileNotFoundError(f"{name} is missing from {', '.join(map(str, folders))}")
        records = np.atleast_1d(loadmat(path, squeeze_me=True)["annotations"])
        annotations[split] = [
            (str(r["fname"]), _class_id(str(r["class"]), len(classes), path, i))
            for i, r in enumerate(records, 1)
        ]
    return classes, annotations


def list_cars(src: Path) -> Listing:
    """Stanford Cars (196 classes), text or MATLAB annotations (see the module docstring)."""
    root = _find(src, "cars_train", ("stanford_cars", "stanford-cars"))
    folders = [root, root / "devkit"]
    found = _cars_text(folders) or _cars_mat(folders)
    if found is None:
        raise FileNotFoundError(
            f"no Stanford Cars annotations in {root} or {root / 'devkit'}: expected names.csv, "
            "anno_train.csv and anno_test.csv, or cars_meta.mat, cars_train_annos.mat and "
            "cars_test_annos_withlabels.mat"
        )
    classes, annotations = found
    splits = {}
    for split, rows in annotations.items():
        images = root / f"cars_{split}"
        if (images / f"cars_{split}").is_dir():
            images = images / f"cars_{split}"
        splits[split] = [(images / file, label) for file, label in rows]
    return Listing(_numbered(classes), splits)


def list_imagefolder_layout(src: Path) -> Listing:
    """An ImageFolder as it is: every split folder present, classes checked to agree."""
    present = [s for s in SPLITS if (src / s).is_dir()]
    if not present:
        if not src.exists():
            raise FileNotFoundError(f"source folder {src} does not exist")
        raise FileNotFoundError(f"no split folder in {src}; expected some of {', '.join(SPLITS)}")
    splits: dict[str, list[tuple[Path, int]]] = {}
    classes: list[str] = []
    for split in present:
        files, labels, classes = list_imagefolder(src, split)
        splits[split] = list(zip(files, labels.tolist(), strict=True))
    return Listing(classes, splits)


LISTERS: dict[str, Callable[[Path], Listing]] = {
    "tiny_imagenet": list_tiny_imagenet,
    "cub200": list_cub200,
    "aircraft": list_aircraft,
    "cars": list_cars,
    "imagefolder": list_imagefolder_layout,
}


def _check_classes(listing: Listing) -> None:
    """Every class has images in every split: an ImageFolder cannot hold an empty class."""
    for split, entries in listing.splits.items():
        counts = np.bincount([label for _, label in entries], minlength=len(listing.classes))
        if (counts == 0).any():
            empty = listing.classes[int(np.flatnonzero(counts == 0)[0])]
            raise ValueError(
                f"class {empty!r} has no {split} images ({int((counts == 0).sum())} classes "
                "without any); every class needs images in every split"
            )


def _check_files(listing: Listing) -> None:
    """Every listed file exists and every class has images in every split, before writing."""
    missing = [f for entries in listing.splits.values() for f, _ in entries if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed image file(s) missing, e.g. {missing[0]}")
    _check_classes(listing)


def _labelled(images: ImageSet) -> list[tuple[Path, int]]:
    """An in-memory split as listing entries (no files: only the labels are checked)."""
    return [(Path(), label) for label in images.labels.tolist()]


def _clear(out: Path, split: str, fmt: str, overwrite: bool) -> None:
    """Refuse to mix a new split into an old one, unless told to replace it."""
    if fmt == "imagefolder":
        existing = [out / split] if (out / split).exists() and any((out / split).iterdir()) else []
    else:
        existing = find_shards(out, split) if out.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; remove it or pass overwrite=True to replace the "
            f"{split} split"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _copy_imagefolder(listing: Listing, out: Path) -> None:
    jobs: list[tuple[Path, Path]] = []
    for split, entries in listing.splits.items():
        used: set[Path] = set()
        for file, label in entries:
            target = out / split / listing.classes[label] / file.name
            while target in used:  # two sources with one name (a nested ImageFolder)
                target = target.with_name("_" + target.name)
            used.add(target)
            jobs.append((file, target))
    for folder in {target.parent for _, target in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    parallel_fill(len(jobs), lambda i: shutil.copyfile(*jobs[i]), chunk=64)


def _write_pngs(images: ImageSet, out: Path, split: str) -> None:
    for name in images.classes:
        (out / split / folder_name(name)).mkdir(parents=True, exist_ok=True)
    pixels = images.images.permute(0, 2, 3, 1).numpy()
    labels = images.labels.tolist()

    def save(i: int) -> None:
        folder = out / split / folder_name(images.classes[labels[i]])
        Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png")

    parallel_fill(len(labels), save, chunk=64)


def prepare(
    layout: str,
    src: str | Path,
    out: str | Path,
    fmt: str = "imagefolder",
    *,
    image_size: int | None = None,
    encoding: str | None = None,
    images_per_shard: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert ``src`` (a published ``layout``) into ``out`` in format ``fmt``; returns ``out``.

    ``fmt`` is ``imagefolder`` (files copied as they are; CIFAR written as PNG) or ``parquet``
    (shards of format ``FORMAT_VERSION``). ``image_size`` defaults to the data set's (32, 64 or
    224 px); ``encoding`` to ``raw`` up to 64 px (pixels brought to that square size) and
    ``original`` above: each file stored byte for byte at its own size, ``image_size`` recorded
    as the training size, so crops come from the whole original photo (Table 10). A split that
    already exists in ``out`` is an error unless ``overwrite``. Every listed file is checked to
    exist before anything is written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; allowed: {', '.join(ENCODINGS)}")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    size = image_size or (DATASETS[layout].image_size if layout in DATASETS else 224)
    encoding = encoding or ("raw" if size <= 64 else "original")
    if layout in CIFAR_LAYOUTS and encoding == "original":
        raise ValueError(f"{layout} comes as pickled pixels, not files: use raw, png or jpeg")

    if layout in CIFAR_LAYOUTS:
        if image_size not in (None, 32):
            raise ValueError(f"{layout} images are 32 px; image_size={image_size} is not possible")
        sets = {split: load_cifar(src, layout, split) for split in CIFAR_SPLITS}
        _check_classes(Listing(sets["train"].classes, {s: _labelled(d) for s, d in sets.items()}))
        for split in sets:
            _clear(out, split, fmt, overwrite)
        for split, images in sets.items():
            if fmt == "imagefolder":
                _write_pngs(images, out, split)
            else:
                write_parquet_shards(
                    images, out, split=split, encoding=encoding, images_per_shard=images_per_shard
                )
        return out

    listing = LISTERS[layout](src)
    _check_files(listing)
    for split in listing.splits:
        _clear(out, split, fmt, overwrite)
    if fmt == "imagefolder":
        _copy_imagefolder(listing, out)
        return out
    for split, entries in listing.splits.items():
        files = [f for f, _ in entries]
        labels = torch.tensor([label for _, label in entries], dtype=torch.long)
        source: ImageSource = ImageFiles(files, labels, listing.classes, size)
        write_parquet_shards(
            source, out, split=split, encoding=encoding, images_per_shard=images_per_shard
        )
    return out
