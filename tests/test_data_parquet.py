"""Parquet shards: written from any source, read back lazily shard by shard, checked up front."""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainers.data import (
    ImageSource,
    ParquetShards,
    label_fraction,
    open_dataset,
    shard_local_order,
    write_parquet_shards,
)
from trainers.data.parquet import ROWS_PER_GROUP
from trainers.data.synthetic import synthetic


@pytest.fixture
def images():
    return synthetic(100, num_classes=4, image_size=8, seed=0)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_shards_read_back_identical(tmp_path, images, encoding):
    paths = write_parquet_shards(images, tmp_path, images_per_shard=30, encoding=encoding)
    assert [p.name for p in paths] == [f"train-0000{i}.parquet" for i in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]
    shards = ParquetShards(tmp_path, "train")
    assert isinstance(shards, ImageSource)
    assert len(shards) == 100 and shards.image_size == 8 and shards.encoding == encoding
    assert shards.classes == images.classes and torch.equal(shards.labels, images.labels)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shards.read(order), images.images[order])
    assert shards.read(torch.tensor([99, 0, 99])).shape == (3, 3, 8, 8)
    metadata = pq.read_schema(paths[0]).metadata
    assert json.loads(metadata[b"classes"]) == images.classes
    assert (metadata[b"image_size"], metadata[b"channels"]) == (b"8", b"3")
    assert metadata[b"encoding"] == encoding.encode()
    assert metadata[b"format_version"] == b"2"


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_one_image_at_its_own_size_reads_only_its_row_group(tmp_path, images, encoding):
    write_parquet_shards(images, tmp_path, images_per_shard=100, encoding=encoding)
    groups = pq.ParquetFile(tmp_path / "train-00000.parquet").num_row_groups
    assert groups == (1 if encoding == "raw" else -(-100 // ROWS_PER_GROUP))
    shards = ParquetShards(tmp_path, "train")
    for index in (0, ROWS_PER_GROUP - 1, ROWS_PER_GROUP, 99):
        pixels = torch.from_numpy(np.array(shards.open_image(index))).permute(2, 0, 1)
        assert torch.equal(pixels, images.images[index])
    assert shards.shard_loads == ([0] if encoding == "raw" else [])


def test_jpeg_shards_are_close_and_open_dataset_reads_them(tmp_path):
    images = synthetic(40, num_classes=4, image_size=32, seed=0, noise=0.0)  # smooth: JPEG-able
    write_parquet_shards(images, tmp_path, split="test", encoding="jpeg", jpeg_quality=95)
    with pytest.warns(UserWarning, match="has 4 classes; cifar10 has 10"):
        data = open_dataset("cifar10", "test", source="parquet", root=tmp_path)
    pixels = data.read(torch.arange(40))
    assert pixels.dtype == torch.uint8 and pixels.shape == (40, 3, 32, 32)
    assert (pixels.float() - images.images.float()).abs().mean() < 4
    with pytest.raises(ValueError, match="32 px images; image_size=64 is not available"):
        open_dataset("cifar10", "test", source="parquet", root=tmp_path, image_size=64)
    with pytest.raises(FileNotFoundError, match=r"no Parquet shards train-NNNNN\.parquet in .*; "
                       "splits with shards there: test"):  # fmt: skip
        open_dataset("cifar10", "train", source="parquet", root=tmp_path)


def test_reading_opens_only_the_shards_holding_the_indices(tmp_path, images):
    paths = write_parquet_shards(images, tmp_path, images_per_shard=25)
    shards = ParquetShards(tmp_path, "train", cache_shards=2)
    for other in paths[1:]:
        other.unlink()  # only shard 0 is left on disk: reading from it must not need the others
    assert torch.equal(shards.read(torch.tensor([24, 3, 0])), images.images[[24, 3, 0]])
    assert torch.equal(shards.read(torch.arange(10)), images.images[:10])
    assert shards.shard_loads == [0]  # loaded once, then served from the cache
    with pytest.raises(ValueError, match=r"cannot read Parquet shard .*train-00002\.parquet"):
        shards.read(torch.tensor([60]))


def test_lru_cache_keeps_the_most_recent_shards(tmp_path, images):
    write_parquet_shards(images, tmp_path, images_per_shard=25)
    shards = ParquetShards(tmp_path, "train", cache_shards=2)
    for index in (0, 30, 60, 31, 1, 99):
        shards.read(torch.tensor([index]))
    # 0, 1, 2 loaded; 1 is a hit; 0 was evicted by 2, so it is loaded again; then 3.
    assert shards.shard_loads == [0, 1, 2, 0, 3]
    assert shards.cache_info() == {"cached": [0, 3], "capacity": 2, "loads": 5}
    # A batch spanning every shard loads each once, in order, whatever the cache size.
    fresh = ParquetShards(tmp_path, "train", cache_shards=1)
    assert torch.equal(fresh.read(torch.arange(99, -1, -1)), images.images.flip(0))
    assert fresh.shard_loads == [0, 1, 2, 3]


def test_shards_travel_to_another_process_without_their_cache(tmp_path, images):
    write_parquet_shards(images, tmp_path, images_per_shard=50)
    shards = ParquetShards(tmp_path, "train")
    shards.read(torch.arange(100))
    copy = pickle.loads(pickle.dumps(shards))
    assert copy.cache_info()["cached"] == [] and torch.equal(copy.read([7]), images.images[[7]])


def test_unlabelled_images_survive_a_round_trip(tmp_path, images):
    partial = label_fraction(images, 12, seed=0)
    write_parquet_shards(partial, tmp_path, images_per_shard=40)
    shards = ParquetShards(tmp_path, "train")
    assert torch.equal(shards.labels, partial.labels) and int((shards.labels >= 0).sum()) == 12
    view = label_fraction(shards, 0.5, seed=3)  # lazy sources give a view over the shards
    assert torch.equal(view.read([5, 6]), images.images[[5, 6]])


def test_shard_local_order_visits_a_window_of_shards_at_a_time(tmp_path, images):
    write_parquet_shards(images, tmp_path, images_per_shard=10)
    shards = ParquetShards(tmp_path, "train", cache_shards=2)
    order = shard_local_order(shards, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(100))
    windows = shards.shard_of(order).reshape(5, 20)
    assert all(len(set(row.tolist())) == 2 for row in windows)
    for first in range(0, 100, 20):
        shards.read(order[first : first + 20])
    assert sorted(shards.shard_loads) == list(range(10))  # each shard loaded exactly once
    plain = shard_local_order(images, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(100))


def write_table(path, labels, classes=("a", "b"), metadata=True, size=2, version="2"):
    table = pa.table(
        {
            "image": pa.array([bytes(3 * size * size)] * len(labels), pa.binary()),
            "label": pa.array(labels, pa.int64()),
        }
    )
    if metadata:
        # Format 1 (dmsweep data prepare before originals were kept) wrote no format_version.
        versioned = {"format_version": version} if version is not None else {}
        table = table.replace_schema_metadata(
            {**versioned, "classes": json.dumps(list(classes)), "image_size": str(size),
             "channels": "3", "encoding": "raw"}
        )  # fmt: skip
    pq.write_table(table, path)


def test_shards_of_the_earlier_format_are_refused_naming_the_fix(tmp_path):
    # Exactly the metadata the format-1 writer put in every shard: no format_version.
    write_table(tmp_path / "train-00000.parquet", [0, 1], version=None)
    with pytest.raises(ValueError, match=r"train-00000\.parquet is a shard of format 1; this "
                       r"dmsweep reads format 2.*prepare the data set again"):  # fmt: skip
        ParquetShards(tmp_path, "train")
    write_table(tmp_path / "train-00000.parquet", [0, 1], version="3")
    with pytest.raises(ValueError, match="is a shard of format 3; this dmsweep reads format 2"):
        ParquetShards(tmp_path, "train")
    write_table(tmp_path / "train-00000.parquet", [0, 1])
    assert len(ParquetShards(tmp_path, "train")) == 2


def test_shard_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Parquet data folder .*nowhere does not exist"):
        ParquetShards(tmp_path / "nowhere", "train")
    write_table(tmp_path / "train-00000.parquet", [0, 1, 1])
    write_table(tmp_path / "train-00001.parquet", [1, 2, 0])
    with pytest.raises(ValueError, match=r"train-00001\.parquet: label 2 is outside the 2 classes"
                       r" \(allowed: -1 for no label, 0..1\)"):  # fmt: skip
        ParquetShards(tmp_path, "train")
    write_table(tmp_path / "train-00001.parquet", [0, 1], classes=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"train-00001\.parquet: metadata differs from .*train-0"):
        ParquetShards(tmp_path, "train")
    (tmp_path / "train-00001.parquet").rename(tmp_path / "train-00002.parquet")
    with pytest.raises(FileNotFoundError, match=r"shard .*train-00001\.parquet is missing"):
        ParquetShards(tmp_path, "train")
    (tmp_path / "train-00002.parquet").unlink()
    write_table(tmp_path / "train-00000.parquet", [0], metadata=False)
    with pytest.raises(ValueError, match=r"train-00000\.parquet is not a dmsweep image shard: "
                       r"metadata lacks \['classes', 'image_size'"):  # fmt: skip
        ParquetShards(tmp_path, "train")
    (tmp_path / "train-00000.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"cannot read Parquet shard .*train-00000\.parquet"):
        ParquetShards(tmp_path, "train")


def test_writer_rejects_bad_arguments(tmp_path, images):
    with pytest.raises(ValueError, match="unknown encoding 'webp'; allowed: raw, png, jpeg"):
        write_parquet_shards(images, tmp_path, encoding="webp")
    with pytest.raises(ValueError, match="unknown split 'dev'; allowed: train, val, test"):
        write_parquet_shards(images, tmp_path, split="dev")
    with pytest.raises(ValueError, match="images_per_shard must be >= 1"):
        write_parquet_shards(images, tmp_path, images_per_shard=0)
    # Rewriting a split replaces its shards (no stale shard from a larger earlier write).
    write_parquet_shards(images, tmp_path, images_per_shard=10)
    write_parquet_shards(images, tmp_path, images_per_shard=50)
    assert len(list(tmp_path.glob("train-*.parquet"))) == 2


def test_real_cifar10_test_split_as_raw_shards(cifar10_jpg, tmp_path):
    test = open_dataset("cifar10", "test", source="imagefolder", root=cifar10_jpg)
    write_parquet_shards(test, tmp_path, split="test", images_per_shard=3000)
    shards = open_dataset("cifar10", "test", source="parquet", root=tmp_path)
    assert shards.classes == test.classes and torch.equal(shards.labels, test.labels)
    started = time.perf_counter()
    pixels = shards.read(torch.arange(len(shards)))
    print(f"\nraw Parquet: 10,000 CIFAR images read in {time.perf_counter() - started:.3f} s")
    assert torch.equal(pixels, test.read(torch.arange(len(test))))
