"""Some classes of a data set (``DataSettings.classes``): images kept, their labels, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from trainers.config import DataSettings, TrainConfig
from trainers.data import ImageSet, open_dataset
from trainers.data.classes import keep_classes
from trainers.data.sampling import label_fraction, subset
from trainers.recipes import get_recipe
from trainers.splits import open_splits

NAMES = ["cat", "dog", "frog", "ship"]


def _image_set() -> ImageSet:
    # Image i is filled with the value i: which images were kept can be read off the pixels.
    labels = torch.tensor([0, 1, 2, 3, 2, 1, 0, 3, 2, 2])
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 4, 4).clone()
    return ImageSet(images, labels, list(NAMES))


def test_keep_classes_keeps_their_images_in_order_and_relabels_them_in_the_given_order() -> None:
    kept = keep_classes(_image_set(), ["frog", "cat"])
    assert kept.classes == ["frog", "cat"]
    # frog (old 2) at images 2, 4, 8, 9; cat (old 0) at 0, 6; in the images' order.
    assert kept.read(torch.arange(len(kept)))[:, 0, 0, 0].tolist() == [0, 2, 4, 6, 8, 9]
    assert kept.labels.tolist() == [1, 0, 0, 1, 0, 0]


def test_keep_classes_of_a_view_reads_through_to_the_base() -> None:
    view = subset(_image_set(), 8, seed=1)  # an ImageSet: a copy; take a view through a fraction
    view = label_fraction(view, 1.0, seed=0)
    kept = keep_classes(view, ["ship"])
    assert kept.classes == ["ship"]
    assert set(kept.labels.tolist()) == {0}
    pixels = kept.read(torch.arange(len(kept)))[:, 0, 0, 0].tolist()
    assert set(pixels) <= {3, 7}


def test_an_unknown_class_is_refused_listing_the_classes_there_are() -> None:
    with pytest.raises(ValueError, match="'horse' not in the data; its classes are: cat, dog"):
        keep_classes(_image_set(), ["cat", "horse"])
    with pytest.raises(ValueError, match="given more than once"):
        keep_classes(_image_set(), ["cat", "cat"])


def _image_folder(root: Path) -> None:
    """A tiny ImageFolder: 4 classes, 6 train and 2 test PNGs each, pixels = class index * 40."""
    for split, count in (("train", 6), ("test", 2)):
        for index, name in enumerate(NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((8, 8, 3), index * 40, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_open_dataset_keeps_the_classes_in_every_split(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    for split, per_class in (("train", 6), ("test", 2)):
        with pytest.warns(UserWarning, match="has 4 classes"):  # a trimmed copy of CIFAR-10
            data = open_dataset(
                "cifar10", split, source="imagefolder", root=tmp_path, classes=["ship", "dog"]
            )
        assert data.classes == ["ship", "dog"]
        assert data.labels.tolist() == [1] * per_class + [0] * per_class  # dog's folder first
        first_pixel = data.read(torch.arange(len(data)))[:, 0, 0, 0].tolist()
        # The pixels say the class: dog 40, ship 120 (JPEG-free PNGs keep them exact).
        assert first_pixel == [40] * per_class + [120] * per_class


def test_subset_and_labels_are_drawn_among_the_kept_classes(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    with pytest.warns(UserWarning):
        data = open_dataset(
            "cifar10",
            "train",
            source="imagefolder",
            root=tmp_path,
            classes=["frog", "cat"],
            subset=8,
            label_fraction=0.5,
        )
    assert len(data) == 8
    assert torch.bincount(data.labels[data.labels >= 0], minlength=2).tolist() == [2, 2]


def test_a_misspelt_class_names_the_folder_and_lists_its_classes(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    with pytest.raises(ValueError) as error:  # refused before the class count is compared
        open_dataset("cifar10", "test", source="imagefolder", root=tmp_path, classes=["Cat"])
    assert str(tmp_path) in str(error.value)
    assert "its classes are: cat, dog, frog, ship" in str(error.value)


def test_open_splits_applies_the_classes_to_train_and_test() -> None:
    config = TrainConfig.model_validate(
        {
            "data": {
                "name": "synthetic",
                "num_classes": 6,
                "synthetic_images": {"train": 300, "test": 120},
                "classes": ["class_4", "class_1"],
                "test_subset": 20,
            },
            "backbone": {"name": "smallnet"},
            "mixing": {"method": "vanilla"},
            "loss": {"name": "ce"},
            "recipe": "smoke",
        }
    )
    full_train, _, _ = open_splits(
        config.model_copy(update={"data": config.data.model_copy(update={"classes": None})}),
        get_recipe("smoke"),
    )
    train, test, _ = open_splits(config, get_recipe("smoke"))
    for kept in (train, test):
        assert kept.classes == ["class_4", "class_1"]
        assert set(kept.labels.tolist()) == {0, 1}
    # Every image of the two classes, and no other.
    assert len(train) == int(((full_train.labels == 4) | (full_train.labels == 1)).sum())
    assert len(test) == 20


def test_the_classes_setting_is_checked_with_the_spec() -> None:
    assert DataSettings(classes=["a", "b"]).classes == ["a", "b"]
    for bad, message in (
        (["a"], "at least 2"),
        (["a", "a"], "given more than once"),
        (["a", ""], "at least 1 character"),
    ):
        with pytest.raises(ValidationError, match=message):
            DataSettings(classes=bad)
