"""The CIFAR python pickle source, on small files written in the exact published format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.data import open_dataset, prepare
from trainers.data.cifar import load_cifar

CIFAR10_NAMES = [
    *(b"airplane", b"automobile", b"bird", b"cat", b"deer"),
    *(b"dog", b"frog", b"horse", b"ship", b"truck"),
]


def dump(path: Path, content: dict) -> None:
    # Protocol 2 with bytes keys and bytes names: what Python 2's cPickle wrote.
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=2)


def known_images(count: int, seed: int) -> np.ndarray:
    """Rows of the published layout: 1024 red, then 1024 green, then 1024 blue bytes."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 4) -> tuple[np.ndarray, list[int], np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    dump(folder / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_vis": 3072})
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows = known_images(per_batch, seed=i)
        labels = [(per_batch * (i - 1) + j) % 10 for j in range(per_batch)]
        dump(
            folder / f"data_batch_{i}",
            {b"batch_label": b"training batch", b"data": rows, b"labels": labels},
        )
        train_rows.append(rows)
        train_labels += labels
    test_rows = known_images(10, seed=99)
    dump(folder / "test_batch", {b"data": test_rows, b"labels": [9, *range(9)]})
    return np.concatenate(train_rows), train_labels, test_rows


def test_cifar10_pickles_round_trip_pixels_in_rgb_plane_order(tmp_path):
    rows, labels, test_rows = write_cifar10(tmp_path)
    train = load_cifar(tmp_path, "cifar10", "train")
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == labels
    # Pixel (row y, column x) of channel c is byte c * 1024 + y * 32 + x of the row.
    for i, c, y, x in [(0, 0, 0, 0), (7, 1, 5, 31), (19, 2, 31, 0), (11, 2, 17, 9)]:
        assert train.images[i, c, y, x] == rows[i, c * 1024 + y * 32 + x]
    assert torch.equal(train.images.reshape(20, -1), torch.from_numpy(rows))
    test = load_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test")  # the folder itself
    assert test.labels.tolist() == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    rows_read = test.read(torch.tensor([2, 0])).reshape(2, -1)
    assert torch.equal(rows_read, torch.from_numpy(test_rows[[2, 0]]))


def test_plane_order_is_red_green_blue(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    dump(folder / "batches.meta", {b"label_names": CIFAR10_NAMES})
    row = np.concatenate([np.full(1024, 255), np.full(1024, 0), np.full(1024, 128)])
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump(folder / name, {b"data": row[None].astype(np.uint8), b"labels": [3]})
    pixel = load_cifar(tmp_path, "cifar10", "test").images[0, :, 10, 10]
    assert pixel.tolist() == [255, 0, 128]


def test_cifar100_pickles_fine_labels_and_str_keys(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [f"class_{i:02d}".encode() for i in range(100)]
    dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"x"] * 20})
    rows = known_images(6, seed=5)
    dump(
        folder / "train",
        {
            b"filenames": [b"f.png"] * 6,
            b"fine_labels": [0, 99, 50, 1, 2, 3],
            b"coarse_labels": [0] * 6,
            b"data": rows,
        },
    )
    # A file rewritten by Python 3 (str keys) is read the same way.
    with (folder / "test").open("wb") as f:
        pickle.dump({"data": rows[:2], "fine_labels": [7, 8]}, f)
    train = open_dataset("cifar100", "train", root=tmp_path)
    assert train.classes[99] == "class_99" and train.labels.tolist() == [0, 99, 50, 1, 2, 3]
    assert torch.equal(train.images.reshape(6, -1), torch.from_numpy(rows))
    test = open_dataset("cifar100", "test", root=folder)
    assert test.labels.tolist() == [7, 8] and test.image_size == 32 and len(test) == 2


def test_cifar_errors_name_the_file_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR data folder .*nowhere does not exist"):
        load_cifar(tmp_path / "nowhere", "cifar10", "train")
    with pytest.raises(FileNotFoundError, match=r"no cifar10 pickles in .*: expected .*batches\.m"):
        load_cifar(tmp_path, "cifar10", "train")
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"

    dump(folder / "data_batch_3", {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4})
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' has shape \(4, 1024\), expected"
                       r" \(N, 3072\)"):  # fmt: skip
        load_cifar(tmp_path, "cifar10", "train")
    dump(folder / "data_batch_3", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_3: 'labels' has shape \(2,\).*expected \(4,"):
        load_cifar(tmp_path, "cifar10", "train")
    dump(folder / "data_batch_3", {b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4})
    with pytest.raises(ValueError, match="data_batch_3: 'data' has dtype float32, expected uint8"):
        load_cifar(tmp_path, "cifar10", "train")
    dump(folder / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match=r"data_batch_3: label 10 is outside the 10 classes "
                       r"\(allowed 0..9\)"):  # fmt: skip
        load_cifar(tmp_path, "cifar10", "train")
    dump(folder / "data_batch_3", {b"pixels": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="data_batch_3 has no 'data' entry; it has: pixels"):
        load_cifar(tmp_path, "cifar10", "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"CIFAR train file .*data_batch_3 is missing"):
        load_cifar(tmp_path, "cifar10", "train")
    (folder / "test_batch").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(ValueError, match=r"cannot read CIFAR pickle .*test_batch"):
        load_cifar(tmp_path, "cifar10", "test")
    # A pickle that would call a function is refused, not run.
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(os.getcwd, f, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch: refusing to load posix\.getcwd"):
        load_cifar(tmp_path, "cifar10", "test")
    dump(folder / "batches.meta", {b"label_names": CIFAR10_NAMES[:9]})
    with pytest.raises(ValueError, match=r"batches\.meta lists 9 class names .*cifar10 has 10"):
        load_cifar(tmp_path, "cifar10", "test")
    with pytest.raises(ValueError, match="unknown CIFAR split 'val'; allowed: train, test"):
        load_cifar(tmp_path, "cifar10", "val")


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet"])
def test_prepare_cifar_writes_a_lossless_copy(tmp_path, fmt):
    write_cifar10(tmp_path / "src")
    out = prepare("cifar10", tmp_path / "src", tmp_path / "out", fmt)
    original = load_cifar(tmp_path / "src", "cifar10", "train")
    if fmt == "imagefolder":
        assert sorted(p.name for p in (out / "train").iterdir())[:2] == ["airplane", "automobile"]
        assert len(list((out / "test").glob("*/*.png"))) == 10
    copy = open_dataset("cifar10", "train", source=fmt, root=out)
    assert copy.classes == original.classes

    # ImageFolder sorts by class; compare as (label, pixels) multisets.
    def key(data):
        pixels = data.read(torch.arange(len(data))).reshape(len(data), -1)
        return sorted(zip(data.labels.tolist(), map(bytes, pixels.numpy()), strict=True))

    assert key(copy) == key(original)


def test_prepare_cifar_refuses_a_split_without_some_class(tmp_path):
    write_cifar10(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-10-batches-py"
    dump(folder / "test_batch", {b"data": known_images(2, seed=1), b"labels": [1, 2]})
    with pytest.raises(ValueError, match="class 'airplane' has no test images"):
        prepare("cifar10", tmp_path / "src", tmp_path / "out", "imagefolder")
    assert not (tmp_path / "out").exists()
