"""CIFAR-10 and CIFAR-100 in the python pickle format, exactly as published.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
``batches.meta`` (``label_names``); CIFAR-100 (``cifar-100-python``): ``train``, ``test`` and
``meta`` (``fine_label_names``). Each batch is a pickled dict with ``data``, a uint8 array
(N, 3072) whose row is the red 32x32 plane, then green, then blue, each row-major, and the labels
(``labels`` / ``fine_labels``). The files were written by Python 2, so keys and names may be
bytes. A whole split is at most 150 MB, so it is loaded into memory as an
:class:`~trainers.data.base.ImageSet`.

The pickles are read with an unpickler that only builds numpy arrays and plain containers:
a file on a shared volume cannot run code in the training process.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.data.base import ImageSet

IMAGE_SIZE = 32
ROW_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE
CIFAR_SPLITS = ("train", "test")


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and what its dicts call things."""

    folder: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    names_key: str
    labels_key: str
    num_classes: int


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta",
        names_key="label_names",
        labels_key="labels",
        num_classes=10,
    ),
    "cifar100": CifarLayout(
        folder="cifar-100-python",
        splits={"train": ("train",), "test": ("test",)},
        meta="meta",
        names_key="fine_label_names",
        labels_key="fine_labels",
        num_classes=100,
    ),
}

# What a pickled numpy array refers to (numpy 1.x and 2.x module names; ``_codecs.encode`` is
# how Python 3 writes bytes at protocol 2). Nothing else may be looked up while unpickling.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") or module.startswith("numpy._core"):
            # numpy 2 renamed numpy.core to numpy._core; load from whichever this numpy has.
            for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def unpickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (Python 2 bytes keys are decoded)."""
    try:
        with path.open("rb") as f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as error:  # a truncated or foreign file: say which one
        raise ValueError(f"cannot read CIFAR pickle {path}: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"CIFAR pickle {path} holds a {type(content).__name__}, not a dict")
    return {_text(key): value for key, value in content.items()}


def find_cifar_folder(root: Path, name: str) -> Path:
    """The folder holding the pickles: ``root`` itself or ``root/<published folder name>``."""
    layout = CIFAR_LAYOUTS[name]
    for folder in (root, root / layout.folder):
        if (folder / layout.meta).is_file():
            return folder
    if not root.exists():
        raise FileNotFoundError(f"CIFAR data folder {root} does not exist")
    raise FileNotFoundError(
        f"no {name} pickles in {root}: expected {root / layout.meta} or "
        f"{root / layout.folder / layout.meta} (the {layout.folder} folder as published)"
    )


def _key(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise ValueError(
            f"CIFAR pickle {path} has no {key!r} entry; it has: {', '.join(sorted(content))}"
        )
    return content[key]


def cifar_classes(folder: Path, name: str) -> list[str]:
    """Class names from the meta file, checked against the variant's class count."""
    layout = CIFAR_LAYOUTS[name]
    path = folder / layout.meta
    names = [str(_text(n)) for n in _key(unpickle(path), layout.names_key, path)]
    if len(names) != layout.num_classes:
        raise ValueError(
            f"{path} lists {len(names)} class names in {layout.names_key!r}; "
            f"{name} has {layout.num_classes}"
        )
    return names


def _read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    content = unpickle(path)
    data = _key(content, "data", path)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        found = tuple(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(
            f"CIFAR pickle {path}: 'data' has shape {found}, expected (N, {ROW_BYTES})"
        )
    if data.dtype != np.uint8:
        raise ValueError(f"CIFAR pickle {path}: 'data' has dtype {data.dtype}, expected uint8")
    labels = np.asarray(_key(content, layout.labels_key, path))
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"CIFAR pickle {path}: {layout.labels_key!r} has shape {labels.shape} "
            f"({labels.dtype}), expected ({data.shape[0]},) integers, one per row of 'data'"
        )
    bad = (labels < 0) | (labels >= layout.num_classes)
    if bad.any():
        raise ValueError(
            f"CIFAR pickle {path}: label {int(labels[bad][0])} is outside the "
            f"{layout.num_classes} classes (allowed 0..{layout.num_classes - 1})"
        )
    return data, labels


def load_cifar(root: str | Path, name: str, split: str) -> ImageSet:
    """One split of CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) in memory.

    ``root`` is the published folder (``cifar-10-batches-py`` / ``cifar-100-python``) or the
    folder that holds it. Every file is checked as it is read: shape, dtype, label range.
    """
    if name not in CIFAR_LAYOUTS:
        raise ValueError(f"unknown CIFAR variant {name!r}; allowed: {', '.join(CIFAR_LAYOUTS)}")
    if split not in CIFAR_SPLITS:
        raise ValueError(f"unknown CIFAR split {split!r}; allowed: {', '.join(CIFAR_SPLITS)}")
    layout = CIFAR_LAYOUTS[name]
    folder = find_cifar_folder(Path(root), name)
    classes = cifar_classes(folder, name)
    batches = []
    for file in layout.splits[split]:
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR {split} file {path} is missing; {name} {split} needs "
                f"{', '.join(layout.splits[split])} in {folder}"
            )
        batches.append(_read_batch(path, layout))
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    # Row-major R, G, B planes of 32x32 are exactly a (3, 32, 32) CHW image.
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
    return ImageSet(images, torch.from_numpy(labels.astype(np.int64)), classes)
