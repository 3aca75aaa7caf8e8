"""Data sources: the ImageSource contract, open_dataset and its registry, the ImageFolder
source on the real CIFAR-10 JPEGs and on small generated folders, and their errors."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.real_data import unpack_cifar10_jpg
from trainers.data import (
    DATASETS,
    ImageFiles,
    ImageSet,
    ImageSource,
    label_fraction,
    load_imagefolder,
    open_dataset,
    subset,
)
from trainers.data.imagefolder import decode_image, list_imagefolder
from trainers.data.sampling import subset_indices
from trainers.data.synthetic import synthetic

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def save_image(path: Path, size: tuple[int, int], colour=(200, 30, 60), mode="RGB") -> Path:
    """A small image file; a gradient so that a crop or a resize shows."""
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 1))
    pixels = (ramp * np.array(colour)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert("L") if mode == "L" else image).save(path)
    return path


# --- the contract --------------------------------------------------------------------------


def test_imageset_is_an_image_source_reading_in_the_given_order():
    data = synthetic(20, num_classes=4, image_size=8, seed=1)
    assert isinstance(data, ImageSource)
    assert len(data) == 20 and data.image_size == 8
    order = torch.tensor([5, 0, 19, 5])
    assert torch.equal(data.read(order), data.images[order])
    assert data.read([3]).shape == (1, 3, 8, 8) and data.read(torch.arange(0)).shape[0] == 0
    with pytest.raises(IndexError, match="image index 20 is out of range for a source of 20"):
        data.read(torch.tensor([1, 20]))
    with pytest.raises(IndexError, match="image index -1"):
        data.read(torch.tensor([-1]))


def test_registry_names_the_papers_data_sets():
    expected = {
        "cifar10": (10, "cifar", 32),
        "cifar100": (100, "cifar", 32),
        "tiny_imagenet": (200, "imagefolder", 64),
        "cub200": (200, "imagefolder", 224),
        "aircraft": (100, "imagefolder", 224),
        "cars": (196, "imagefolder", 224),
        "imagenet": (1000, "imagefolder", 224),
        "synthetic": (10, "synthetic", 32),
    }
    assert type(DATASETS) is dict and set(DATASETS) == set(expected)
    for name, (classes, source, size) in expected.items():
        info = DATASETS[name]
        assert (info.num_classes, info.default_source, info.image_size) == (classes, source, size)
        assert info.default_source in info.sources
    for name in ("cub200", "aircraft", "cars", "imagenet", "tiny_imagenet"):
        assert DATASETS[name].sources == ("imagefolder", "parquet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["cifar10"].num_classes = 11  # type: ignore[misc]


# --- open_dataset ----------------------------------------------------------------------------


def test_open_dataset_synthetic_splits_options_and_train_only_sampling():
    options = {"num_classes": 4, "images": {"train": 200, "test": 80}}
    train = open_dataset("synthetic", "train", image_size=16, seed=2, synthetic=options)
    test = open_dataset("synthetic", "test", image_size=16, seed=2, synthetic=options)
    assert isinstance(train, ImageSet) and len(train) == 200 and len(test) == 80
    assert train.image_size == 16 and train.classes == [f"class_{i}" for i in range(4)]
    assert torch.equal(train.images, synthetic(200, num_classes=4, image_size=16, seed=2).images)
    assert not torch.equal(test.images[:80], train.images[:80])
    default = open_dataset("synthetic", "val")
    assert (len(default), default.image_size, len(default.classes)) == (1000, 32, 10)

    sampled = open_dataset(
        "synthetic", "train", image_size=16, seed=2, synthetic=options, subset=100,
        label_fraction=20,
    )  # fmt: skip
    assert len(sampled) == 100 and int((sampled.labels >= 0).sum()) == 20
    assert torch.bincount(sampled.labels[sampled.labels >= 0]).tolist() == [5, 5, 5, 5]
    expected = label_fraction(subset(train, 100, seed=2), 20, seed=2)
    assert torch.equal(sampled.labels, expected.labels)
    # The same arguments open the test split whole: sampling is for the train split only.
    same_args = open_dataset(
        "synthetic", "test", image_size=16, seed=2, synthetic=options, subset=10, label_fraction=5
    )
    assert len(same_args) == 80 and bool((same_args.labels >= 0).all())


def test_open_dataset_errors_name_what_is_allowed(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'cifar'; allowed: cifar10, cifar100"):
        open_dataset("cifar", "train")
    with pytest.raises(ValueError, match="unknown source 'lmdb' for data set 'cub200'; allowed: "):
        open_dataset("cub200", "train", source="lmdb")
    with pytest.raises(ValueError, match="source 'cifar' for data set 'cub200'; allowed: image"):
        open_dataset("cub200", "train", source="cifar")
    with pytest.raises(ValueError, match="unknown split 'val' for the cifar source; allowed: tr"):
        open_dataset("cifar10", "val", root=tmp_path)
    with pytest.raises(ValueError, match=r"unknown split 'dev' .* allowed: train, val, test"):
        open_dataset("synthetic", "dev")
    with pytest.raises(ValueError, match=r"unknown synthetic option.* colours; allowed: num_cl"):
        open_dataset("synthetic", "train", synthetic={"colours": 3})
    with pytest.raises(ValueError, match="synthetic options were given for data set 'cifar10'"):
        open_dataset("cifar10", "train", root=tmp_path, synthetic={"num_classes": 3})
    with pytest.raises(ValueError, match="32 px images; image_size=64 is not available"):
        open_dataset("cifar10", "train", root=tmp_path, image_size=64)

    monkeypatch.delenv("DMSWEEP_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match="no root given for data set 'cub200' and DMSWEEP_DATA_"):
        open_dataset("cub200", "train")
    monkeypatch.setenv("DMSWEEP_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"ImageFolder root {tmp_path / 'cub200'} does"):
        open_dataset("cub200", "train")


def test_open_dataset_defaults_the_root_to_the_data_root_variable(monkeypatch, tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(count):
                save_image(tmp_path / "cub200" / split / cls / f"{i}.jpg", (30, 20))
    monkeypatch.setenv("DMSWEEP_DATA_ROOT", str(tmp_path))
    with pytest.warns(UserWarning, match="has 2 classes; cub200 has 200"):
        train = open_dataset("cub200", "train", image_size=16)
    assert (len(train), train.image_size, train.classes) == (6, 16, ["a", "b"])


# --- ImageFolder on the real CIFAR-10 JPEGs ------------------------------------------------------


def test_missing_real_data_fails_naming_the_archive(monkeypatch, tmp_path):
    monkeypatch.setenv("DMSWEEP_SHARED", str(tmp_path / "elsewhere"))
    expected = str(tmp_path / "elsewhere" / "data" / "cifar10-jpg.tar.gz")
    with pytest.raises(pytest.fail.Exception, match=re.escape(expected) + " is missing"):
        unpack_cifar10_jpg(tmp_path)


def test_cifar10_jpegs_test_split(cifar10_jpg):
    started = time.perf_counter()
    test = open_dataset("cifar10", "test", source="imagefolder", root=cifar10_jpg)
    seconds = time.perf_counter() - started
    print(f"\nCIFAR-10 JPEG test split: 10,000 images decoded in {seconds:.2f} s")
    assert test.classes == CIFAR10_CLASSES
    assert len(test) == 10_000 and test.image_size == 32
    images = test.read(torch.arange(len(test)))
    assert images.dtype == torch.uint8 and images.shape == (10_000, 3, 32, 32)
    assert test.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # Pixels are PIL's decoding of the file, unchanged (the images already are 32 px).
    file = cifar10_jpg / "test" / "cat" / "0007.jpg"
    index = 3 * 1000 + 7
    with Image.open(file) as pil:
        expected = torch.from_numpy(np.asarray(pil.convert("RGB")).transpose(2, 0, 1).copy())
    assert torch.equal(test.read(torch.tensor([index]))[0], expected)
    assert images.float().std() > 40  # real photos, not a constant


def test_cifar10_jpegs_train_split_and_the_papers_label_counts(cifar10_jpg):
    started = time.perf_counter()
    train = open_dataset(
        "cifar10", "train", source="imagefolder", root=cifar10_jpg, label_fraction=250, seed=1
    )
    seconds = time.perf_counter() - started
    print(f"\nCIFAR-10 JPEG train split: 50,000 images decoded in {seconds:.2f} s")
    assert len(train) == 50_000 and train.read(torch.tensor([49_999])).shape == (1, 3, 32, 32)
    labelled = train.labels[train.labels >= 0]
    assert len(labelled) == 250 and torch.bincount(labelled).tolist() == [25] * 10
    assert int((train.labels == -1).sum()) == 49_750


# --- ImageFolder on generated folders --------------------------------------------------------


def make_folder(root: Path, counts: dict[str, int], size=(32, 32), ext=".png") -> Path:
    for split in ("train", "test"):
        for cls, count in counts.items():
            for i in range(count if split == "train" else 1):
                save_image(root / split / cls / f"{i:03d}{ext}", size, colour=(40 * i, 90, 200))
    return root


def test_imagefolder_reads_jpeg_and_png_in_any_case_sorted_and_converted_to_rgb(tmp_path):
    root = tmp_path / "folder"
    save_image(root / "train" / "zebra" / "b.JPG", (32, 32))
    save_image(root / "train" / "zebra" / "a.png", (32, 32), mode="L")
    save_image(root / "train" / "ant" / "x.Jpeg", (32, 32))
    save_image(root / "train" / "ant" / "y.PNG", (32, 32))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / "._x.Jpeg").write_bytes(b"macOS resource fork, not an image")
    (root / "train" / ".hidden").mkdir()
    data = load_imagefolder(root, "train", 32)
    assert isinstance(data, ImageSet) and data.classes == ["ant", "zebra"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    # a.png is greyscale: converted to RGB, the three channels equal.
    grey = data.read(torch.tensor([2]))[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_imagefolder_keeps_the_right_size_and_centre_crops_the_others(tmp_path):
    root = tmp_path / "folder"
    save_image(root / "train" / "a" / "wide.png", (48, 24))  # gradient along the width
    save_image(root / "train" / "a" / "square.png", (16, 16))
    data = load_imagefolder(root, "train", 16)
    square, wide = data.read(torch.tensor([0, 1]))
    with Image.open(root / "train" / "a" / "square.png") as pil:
        assert torch.equal(square, torch.from_numpy(np.asarray(pil).transpose(2, 0, 1).copy()))
    # 48x24 -> shorter side 16 gives 32x16; the centre 16 columns are the middle of the ramp.
    red = wide[0].float()
    assert wide.shape == (3, 16, 16)
    assert 45 < red[:, 0].mean() < 65 and 140 < red[:, -1].mean() < 160
    assert np.array_equal(decode_image(root / "train" / "a" / "wide.png", 16), wide.numpy())


def test_imagefolder_lazy_reads_the_same_pixels_as_in_memory(tmp_path):
    root = make_folder(tmp_path / "folder", {"a": 3, "b": 2}, size=(40, 30), ext=".jpg")
    eager = load_imagefolder(root, "train", 24)
    lazy = load_imagefolder(root, "train", 24, in_memory=False)
    assert isinstance(lazy, ImageFiles) and isinstance(lazy, ImageSource)
    order = torch.tensor([4, 0, 2])
    assert torch.equal(lazy.read(order), eager.read(order))
    assert torch.equal(lazy.labels, eager.labels) and lazy.image_size == 24 and len(lazy) == 5


def test_imagefolder_errors_name_the_folder_or_file(tmp_path):
    root = make_folder(tmp_path / "folder", {"a": 2, "b": 2})
    with pytest.raises(FileNotFoundError, match=f"ImageFolder root {tmp_path / 'nowhere'} does"):
        load_imagefolder(tmp_path / "nowhere", "train", 32)
    with pytest.raises(FileNotFoundError, match=r"split folder .*val does not exist; split folders"
                       r" found in .*: train, test \(allowed: train, val, test\)"):  # fmt: skip
        load_imagefolder(root, "val", 32)

    (root / "train" / "c").mkdir()
    (root / "test" / "c").mkdir()
    (root / "test" / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*train/c holds no images \(allowed ext"):
        load_imagefolder(root, "train", 32)
    (root / "test" / "c" / "bad.jpg").write_bytes(b"this is not a jpeg")
    save_image(root / "train" / "c" / "0.png", (32, 32))
    with pytest.raises(ValueError, match=r"cannot decode image .*test/c/bad\.jpg"):
        load_imagefolder(root, "test", 32)
    lazy = load_imagefolder(root, "test", 32, in_memory=False)  # lazy: found when read
    assert lazy.read(torch.tensor([0])).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"cannot decode image .*test/c/bad\.jpg"):
        lazy.read(torch.tensor([2]))

    truncated = root / "test" / "c" / "bad.jpg"
    save_image(truncated, (64, 64))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot decode image .*test/c/bad\.jpg"):
        load_imagefolder(root, "test", 32)

    (root / "test" / "d").mkdir()
    save_image(root / "test" / "d" / "0.png", (32, 32))
    with pytest.raises(ValueError, match=r"class folders of .*train and .*test differ .* only in "
                       r"test: \['d'\]"):  # fmt: skip
        load_imagefolder(root, "train", 32)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders in"):
        load_imagefolder(empty, "train", 32)


def test_imagefolder_subset_decodes_only_the_kept_images(tmp_path):
    root = make_folder(tmp_path / "folder", {"a": 6, "b": 6}, size=(20, 20))
    files, _, _ = list_imagefolder(root, "train")
    expected = subset(load_imagefolder(root, "train", 16), 4, seed=3)
    kept = subset_indices(load_imagefolder(root, "train", 16), 4, seed=3).tolist()
    for i, file in enumerate(files):
        if i not in kept:
            file.write_bytes(b"never decoded")
    with pytest.warns(UserWarning, match="has 2 classes"):
        picked = open_dataset("tiny_imagenet", "train", root=root, image_size=16, subset=4, seed=3)
    assert isinstance(picked, ImageSet) and torch.equal(picked.images, expected.images)
    assert torch.equal(picked.labels, expected.labels) and picked.labels.tolist() == [0, 0, 1, 1]
    # A photo data set keeps its files as they are (lazy): the subset is a list of kept files.
    with pytest.warns(UserWarning, match="has 2 classes"):
        photos = open_dataset("cub200", "train", root=root, image_size=16, subset=4, seed=3)
    assert isinstance(photos, ImageFiles) and photos.files == [files[i] for i in kept]
    assert torch.equal(photos.read(torch.arange(4)), expected.images)
