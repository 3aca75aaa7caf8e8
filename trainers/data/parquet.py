"""Parquet shards: a split as ``<split>-00000.parquet``, ``<split>-00001.parquet``, ...

Each shard has two columns, ``image`` (binary) and ``label`` (int64), and the schema metadata
says how to read them: ``format_version`` (:data:`FORMAT_VERSION`), ``classes`` (a JSON list of
the class names), ``image_size``, ``channels`` and ``encoding``:

* ``raw``: the uint8 CHW pixels of one image, 3 * image_size**2 bytes. A shard is decoded with
  one ``np.frombuffer`` over the whole column (no per-image Python), so reading is about as fast
  as the disk. The default for small images (CIFAR, Tiny-ImageNet).
* ``original``: each row is an image file byte for byte (the JPEG as published), at its own
  size; ``image_size`` is the data set's training size. What ``dmsweep data prepare`` writes for
  the photo data sets (ImageNet, CUB-200, Aircraft, Cars), so that RandomResizedCrop sees the
  whole original photo and evaluation resizes the original (Table 10).
* ``png`` / ``jpeg``: an in-memory source encoded at its one size, one image per row.

Encoded rows are decoded per image, only for the rows asked for. Shards of an earlier format
(format 1 stored the photo data sets as centre squares at the training size, and had no
``format_version``) are refused with a message saying to prepare them again.

Reading is lazy: opening a split reads each shard's footer and its (small) label column, which
also checks every label up front; ``read(indices)`` opens only the shards holding those indices
and keeps the most recently used shards in an LRU cache, so a worker can stream its part of a
split from a shared volume. Order the reads shard by shard (:func:`shard_local_order`) when the
split is bigger than the cache, or every batch loads many shards.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor

from trainers.data.base import SPLITS, ImageSource, IndexLike, as_index, to_pil
from trainers.data.buckets import bucket_filesystem, is_bucket_uri
from trainers.data.imagefolder import open_original, parallel_fill, to_square

ENCODINGS = ("raw", "png", "jpeg", "original")
# 2: originals kept as they are ("original" encoding); 1 (no version in the metadata): the photo
# data sets stored as centre squares at the training size.
FORMAT_VERSION = 2
SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<number>\d{5})\.parquet$")
# Default shard size: 128 MiB of decoded pixels (43,690 CIFAR images, 891 at 224 px).
SHARD_BYTES = 128 << 20
# Default cache: as many decoded shards as fit in 1 GiB, never fewer than two.
CACHE_BYTES = 1 << 30
# Arrow's binary type has int32 offsets: one raw shard must stay below 2 GiB.
# Encoded shards are written in row groups of this many images, so that one image can be read
# without the rest of its shard: the per-sample path reads images in random order, in several
# worker processes, each with its own cache. Reading one image reads its group (16 ImageNet
# photos, ~2 MB); smaller groups would make each shard's footer, read per group, the larger cost.
ROWS_PER_GROUP = 16
# Row groups each reader keeps for the per-sample path (256 groups of 16 ~110 kB photos: ~450 MB).
CACHE_GROUPS = 256
_MAX_COLUMN_BYTES = (1 << 31) - 1


# A shard: a local file, or an object of a bucket (its URI, ``s3://bucket/key``).
Shard = Path | str


def shard_path(out_dir: Path, split: str, number: int) -> Path:
    """Where shard ``number`` of ``split`` lives."""
    return out_dir / f"{split}-{number:05d}.parquet"


def _shard_of(root: Path | str, split: str, number: int) -> Shard:
    if isinstance(root, str):  # a bucket prefix
        return f"{root.rstrip('/')}/{split}-{number:05d}.parquet"
    return shard_path(root, split, number)


def _names(root: Path | str) -> list[tuple[str, Shard]]:
    """(name, shard) of each entry of a folder, or of each object one level below a prefix."""
    if isinstance(root, Path):
        return [(entry.name, Path(entry.path)) for entry in os.scandir(root)]
    filesystem, prefix = bucket_filesystem(root)
    selector = pafs.FileSelector(prefix, allow_not_found=True, recursive=False)
    base = root.rstrip("/")
    return [(i.base_name, f"{base}/{i.base_name}") for i in filesystem.get_file_info(selector)]


def _where(shard: Shard) -> tuple[Any, Any]:
    """``(source, filesystem)`` for pyarrow.parquet.

    A local file as it is (no file system: pyarrow's default), an object by its path in its
    bucket's file system (``trainers.data.buckets``).
    """
    if isinstance(shard, str) and is_bucket_uri(shard):
        filesystem, path = bucket_filesystem(shard)
        return path, filesystem
    return shard, None


def _parquet_file(shard: Shard) -> pq.ParquetFile:
    source, filesystem = _where(shard)
    return pq.ParquetFile(source, filesystem=filesystem)


def find_shards(root: Path, split: str) -> list[Path]:
    """The shard files of ``split`` in ``root``, in order (unchecked)."""
    return [shard for shard in _find_shards(root, split) if isinstance(shard, Path)]


def _find_shards(root: Path | str, split: str) -> list[Shard]:
    """The shards of ``split`` in a folder or a bucket prefix, in order (unchecked)."""
    found = []
    for name, shard in _names(root):
        match = SHARD_NAME.match(name)
        if match and match["split"] == split:
            found.append((int(match["number"]), shard))
    return [shard for _, shard in sorted(found, key=lambda item: item[0])]


def _encode(image: np.ndarray, encoding: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(image.transpose(1, 2, 0))
    if encoding == "png":
        pil.save(buffer, format="PNG", compress_level=6)
    else:
        pil.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _original_column(source: ImageSource, index: Tensor, workers: int | None) -> pa.Array:
    """The files of ``source`` (which must have ``encoded(i)``), each checked to be an image."""
    encoded_of = getattr(source, "encoded", None)
    if encoded_of is None:
        raise ValueError(
            f"encoding 'original' stores image files as they are: {source!r} has no files "
            "(an ImageFolder or 'original' Parquet shards do); use raw, png or jpeg"
        )
    rows = index.tolist()
    encoded: list[bytes] = [b""] * len(rows)

    def fill(i: int) -> None:
        data = encoded_of(rows[i])
        try:  # the header only: a file that is no image fails here, not in the middle of a run
            with Image.open(io.BytesIO(data)):
                pass
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"image {rows[i]} of {source!r} is not an image: {error}") from error
        encoded[i] = data

    parallel_fill(len(rows), fill, workers, chunk=64)
    return pa.array(encoded, type=pa.binary())


def _image_column(images: Tensor, encoding: str, quality: int, workers: int | None) -> pa.Array:
    pixels = images.contiguous().numpy()
    count, per_image = len(pixels), pixels[0].size if len(pixels) else 0
    if encoding == "raw":
        # One binary array over the tensor's own bytes: no per-image Python, no copy.
        offsets = np.arange(count + 1, dtype=np.int32) * per_image
        return pa.Array.from_buffers(
            pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(pixels.reshape(-1))]
        )
    encoded: list[bytes] = [b""] * count

    def fill(i: int) -> None:
        encoded[i] = _encode(pixels[i], encoding, quality)

    parallel_fill(count, fill, workers, chunk=64)
    return pa.array(encoded, type=pa.binary())


def write_parquet_shards(
    source: ImageSource,
    out_dir: str | Path,
    *,
    split: str = "train",
    images_per_shard: int | None = None,
    encoding: str = "raw",
    jpeg_quality: int = 95,
    compression: str | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write every image of ``source`` as shards ``out_dir/<split>-NNNNN.parquet``.

    ``images_per_shard`` defaults to 128 MiB of decoded pixels per shard. ``compression`` is
    Parquet's page compression: ``none`` for png/jpeg (already compressed), ``zstd`` for raw
    by default. Shards of ``split`` already in ``out_dir`` are replaced; each shard is written
    under a temporary name and renamed, so a reader never sees half a shard. Returns the paths.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; allowed: {', '.join(ENCODINGS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    size = source.image_size
    per_image = 3 * size * size
    if images_per_shard is None:
        images_per_shard = max(1, SHARD_BYTES // per_image)
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    if encoding == "raw" and images_per_shard * per_image > _MAX_COLUMN_BYTES:
        raise ValueError(
            f"{images_per_shard} raw images of {size} px per shard exceed 2 GiB; "
            f"use at most {_MAX_COLUMN_BYTES // per_image} images per shard"
        )
    labels = source.labels
    classes = list(source.classes)
    if len(labels) and (int(labels.min()) < -1 or int(labels.max()) >= len(classes)):
        raise ValueError(
            f"labels of the source lie in {int(labels.min())}..{int(labels.max())}; allowed: "
            f"-1 (no label) and 0..{len(classes) - 1}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in find_shards(out, split):
        stale.unlink()
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "classes": json.dumps(classes),
        "image_size": str(size),
        "channels": "3",
        "encoding": encoding,
    }
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64())], metadata=metadata)
    compression = compression or ("zstd" if encoding == "raw" else "none")
    paths = []
    for number, start in enumerate(range(0, len(source), images_per_shard)):
        index = torch.arange(start, min(start + images_per_shard, len(source)))
        if encoding == "original":
            column = _original_column(source, index, workers)
        else:
            images = source.read(index)
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size):
                raise ValueError(
                    f"source.read gave {images.dtype} images of shape {tuple(images.shape)}; "
                    f"expected uint8 (N, 3, {size}, {size})"
                )
            column = _image_column(images, encoding, jpeg_quality, workers)
        table = pa.Table.from_arrays([column, pa.array(labels[index].numpy())], schema=schema)
        path = shard_path(out, split, number)
        partial = path.with_name(path.name + ".partial")
        groups = None if encoding == "raw" else ROWS_PER_GROUP  # raw is read whole
        pq.write_table(table, partial, compression=compression, row_group_size=groups)
        os.replace(partial, path)
        paths.append(path)
    return paths


def _metadata(path: Shard) -> dict[str, Any]:
    try:
        source, filesystem = _where(path)
        schema = pq.read_schema(source, filesystem=filesystem)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"cannot read Parquet shard {path}: {error}") from error
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    missing = [k for k in ("classes", "image_size", "channels", "encoding") if k not in raw]
    columns = {"image": pa.binary(), "label": pa.int64()}
    wrong = [
        f"{name} ({schema.field(name).type if name in schema.names else 'missing'})"
        for name, kind in columns.items()
        if name not in schema.names or schema.field(name).type != kind
    ]
    if missing or wrong:
        raise ValueError(
            f"{path} is not a dmsweep image shard: metadata lacks {missing}, columns {wrong}; "
            "expected columns image (binary), label (int64) and metadata classes, image_size, "
            "channels, encoding (see write_parquet_shards)"
        )
    version = raw.get("format_version", "1")
    if version != str(FORMAT_VERSION):
        raise ValueError(
            f"{path} is a shard of format {version}; this dmsweep reads format {FORMAT_VERSION}, "
            "which keeps the original images (format 1 stored photos as centre squares at the "
            "training size): prepare the data set again with `dmsweep data prepare ... "
            "--format parquet --overwrite`"
        )
    meta = {
        "classes": json.loads(raw["classes"]),
        "image_size": int(raw["image_size"]),
        "channels": int(raw["channels"]),
        "encoding": raw["encoding"],
    }
    if meta["encoding"] not in ENCODINGS or meta["channels"] != 3:
        raise ValueError(
            f"{path}: encoding {meta['encoding']!r} with {meta['channels']} channels; "
            f"allowed: encodings {', '.join(ENCODINGS)} with 3 channels"
        )
    return meta


class ParquetShards:
    """One split of Parquet shards, read lazily shard by shard (see the module docstring).

    ``cache_shards`` is how many shards the LRU cache keeps (default: as many as fit in
    1 GiB of decoded pixels, at least two). ``shard_loads`` lists the shard numbers in the order
    they were read from disk: how a test (or a throughput check) sees what was opened.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        cache_shards: int | None = None,
        workers: int | None = None,
    ) -> None:
        # A bucket prefix (s3://...) stays a string: a Path would fold its '//'.
        root = str(root).rstrip("/") if is_bucket_uri(str(root)) else Path(root)
        if cache_shards is not None and cache_shards < 1:
            raise ValueError(f"cache_shards must be >= 1, got {cache_shards}")
        if isinstance(root, Path) and not root.is_dir():
            raise FileNotFoundError(f"Parquet data folder {root} does not exist")
        self.root, self.split, self.workers = root, split, workers
        self.shards = _find_shards(root, split)
        if not self.shards:
            found = sorted(
                {m["split"] for name, _ in _names(root) if (m := SHARD_NAME.match(name))}
            )
            raise FileNotFoundError(
                f"no Parquet shards {split}-NNNNN.parquet in {root}; splits with shards there: "
                f"{', '.join(found) or 'none'}"
            )
        for number, path in enumerate(self.shards):
            if path != _shard_of(root, split, number):
                raise FileNotFoundError(
                    f"shard {_shard_of(root, split, number)} is missing (found "
                    f"{str(path).rsplit('/', 1)[-1]} after it): shards of a split are numbered "
                    "00000, 00001, ... without gaps"
                )
        meta = _metadata(self.shards[0])
        self.classes: list[str] = meta["classes"]
        self.image_size: int = meta["image_size"]
        self.encoding: str = meta["encoding"]
        labels, counts = [], []
        for path in self.shards:
            if path != self.shards[0] and _metadata(path) != meta:
                raise ValueError(
                    f"{path}: metadata differs from {self.shards[0]} (classes, image size or "
                    "encoding); a split's shards must be written together"
                )
            shard_labels = self._labels(path)
            labels.append(shard_labels)
            counts.append(len(shard_labels))
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        per_image = 3 * self.image_size**2
        self.cache_shards = cache_shards or max(2, CACHE_BYTES // (per_image * max(counts)))
        self.shard_loads: list[int] = []
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._groups: OrderedDict[tuple[int, int], Any] = OrderedDict()
        # Per shard, the row where each row group ends: read from its footer once.
        self._group_ends: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _labels(self, path: Shard) -> np.ndarray:
        try:
            source, filesystem = _where(path)
            labels = pq.read_table(source, columns=["label"], filesystem=filesystem).column("label")
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"cannot read Parquet shard {path}: {error}") from error
        if labels.null_count:
            raise ValueError(f"Parquet shard {path}: {labels.null_count} labels are null")
        values = labels.to_numpy().astype(np.int64)
        bad = (values < -1) | (values >= len(self.classes))
        if bad.any():
            raise ValueError(
                f"Parquet shard {path}: label {int(values[bad][0])} is outside the "
                f"{len(self.classes)} classes (allowed: -1 for no label, "
                f"0..{len(self.classes) - 1})"
            )
        return values

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return (
            f"ParquetShards({self.root}, {self.split!r}: {len(self)} images in "
            f"{len(self.shards)} shards, {self.encoding}, {self.image_size}px)"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Sent to another process (a Ray worker): paths and labels travel, the cache does not.
        state = self.__dict__.copy()
        state["_cache"], state["_groups"], state["_lock"] = OrderedDict(), OrderedDict(), None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def shard_of(self, indices: IndexLike) -> np.ndarray:
        """The shard number holding each index."""
        index = as_index(indices, len(self)).numpy()
        return np.searchsorted(self.starts, index, side="right") - 1

    def _load(self, number: int) -> Any:
        path = self.shards[number]
        try:
            source, filesystem = _where(path)
            table = pq.read_table(source, columns=["image"], filesystem=filesystem)
            column = table.column("image").combine_chunks()
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"cannot read Parquet shard {path}: {error}") from error
        count = int(self.starts[number + 1] - self.starts[number])
        if len(column) != count or column.null_count:
            raise ValueError(
                f"Parquet shard {path}: {len(column)} images ({column.null_count} null) for "
                f"{count} labels"
            )
        buffers = column.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int32)[column.offset :][: count + 1]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] else np.empty(0, np.uint8)
        if self.encoding != "raw":
            return offsets, data
        size = self.image_size
        if (np.diff(offsets) != 3 * size * size).any():
            raise ValueError(
                f"Parquet shard {path}: a raw image is not {3 * size * size} bytes "
                f"(3 x {size} x {size} uint8)"
            )
        # One frombuffer over the whole column; the copy gives torch memory it may own (Arrow's
        # buffers are read-only) and lets the Arrow table go.
        pixels = data[offsets[0] : offsets[-1]].reshape(count, 3, size, size)
        return torch.from_numpy(pixels.copy())

    def _shard(self, number: int) -> Any:
        with self._lock:
            if number in self._cache:
                self._cache.move_to_end(number)
                return self._cache[number]
        loaded = self._load(number)
        with self._lock:
            self.shard_loads.append(number)
            self._cache[number] = loaded
            while len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        return loaded

    def _locate(self, index: int) -> tuple[int, int]:
        """(shard number, row in it) of image ``index``."""
        position = int(as_index([index], len(self))[0])
        number = int(np.searchsorted(self.starts, position, side="right") - 1)
        return number, position - int(self.starts[number])

    def _group(self, number: int, row: int) -> tuple[Any, int]:
        """The row group of shard ``number`` holding ``row`` (cached), and the row within it."""
        path = self.shards[number]
        try:
            with self._lock:
                ends = self._group_ends.get(number)
            file = None
            if ends is None:
                file = _parquet_file(path)
                sizes = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
                ends = np.cumsum(sizes)
                with self._lock:
                    self._group_ends[number] = ends
            group = int(np.searchsorted(ends, row, side="right"))
            first = int(ends[group - 1]) if group else 0
            key = (number, group)
            with self._lock:
                if key in self._groups:
                    self._groups.move_to_end(key)
                    return self._groups[key], row - first
            file = file or _parquet_file(path)
            column = file.read_row_group(group, columns=["image"]).column("image")
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"cannot read Parquet shard {path}: {error}") from error
        column = column.combine_chunks()
        buffers = column.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int32)[column.offset :][: len(column) + 1]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] else np.empty(0, np.uint8)
        with self._lock:
            self._groups[key] = (offsets, data)
            while len(self._groups) > CACHE_GROUPS:
                self._groups.popitem(last=False)
        return (offsets, data), row - first

    def _row_image(self, number: int, rows: Any, row: int, shard_row: int) -> Image.Image:
        """Row ``row`` of ``rows`` (a shard's or a row group's column), decoded.

        ``shard_row`` is its row in shard ``number``: what an error names.
        """
        offsets, data = rows
        return open_original(
            data[offsets[row] : offsets[row + 1]].tobytes(),
            f"in row {shard_row} of Parquet shard {self.shards[number]}",
        )

    def encoded(self, index: int) -> bytes:
        """The stored bytes of image ``index`` (the original file for encoding 'original')."""
        number, row = self._locate(index)
        if self.encoding == "raw":
            return bytes(self._shard(number)[row].numpy().tobytes())
        (offsets, data), row = self._group(number, row)
        return data[offsets[row] : offsets[row + 1]].tobytes()

    def open_image(self, index: int) -> Image.Image:
        """Image ``index`` as stored: the original photo for encoding 'original', RGB.

        Encoded images are read a row group at a time, not a shard (see ``ROWS_PER_GROUP``).
        """
        number, row = self._locate(index)
        if self.encoding == "raw":
            return to_pil(self._shard(number)[row])
        group, in_group = self._group(number, row)
        return self._row_image(number, group, in_group, row)

    def _decode_rows(self, number: int, shard: Any, rows: np.ndarray) -> Tensor:
        size = self.image_size
        images = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        out = images.numpy()

        def fill(i: int) -> None:
            image = self._row_image(number, shard, int(rows[i]), int(rows[i]))
            if self.encoding == "original":  # photos of any size: the batched path's squares
                image = to_square(image, size)
            pixels = np.asarray(image)
            if pixels.shape != (size, size, 3):
                row = int(rows[i])
                raise ValueError(
                    f"Parquet shard {self.shards[number]}: image in row {row} is "
                    f"{pixels.shape[1]}x{pixels.shape[0]}, the metadata says {size}x{size}"
                )
            out[i] = pixels.transpose(2, 0, 1)

        parallel_fill(len(rows), fill, self.workers, chunk=32)
        return images

    def read(self, indices: IndexLike) -> Tensor:
        """The images at ``indices``, in that order, opening only the shards that hold them."""
        index = as_index(indices, len(self)).numpy()
        shards = np.searchsorted(self.starts, index, side="right") - 1
        size = self.image_size
        out = torch.empty((len(index), 3, size, size), dtype=torch.uint8)
        for number in np.unique(shards):
            positions = np.flatnonzero(shards == number)
            rows = index[positions] - self.starts[number]
            shard = self._shard(int(number))
            if self.encoding == "raw":
                images = shard.index_select(0, torch.from_numpy(rows))
            else:
                images = self._decode_rows(int(number), shard, rows)
            out[torch.from_numpy(positions)] = images
        return out

    def cache_info(self) -> dict[str, Any]:
        """Which shards are cached now, the cache's capacity and how many loads so far."""
        with self._lock:
            cached = list(self._cache)
        return {"cached": cached, "capacity": self.cache_shards, "loads": len(self.shard_loads)}


def shard_local_order(
    source: ImageSource, generator: torch.Generator, *, window: int | None = None
) -> Tensor:
    """A random order of all indices that visits a sharded source a few shards at a time.

    For :class:`ParquetShards` the shards are shuffled, cut into windows of ``window`` shards
    (default: the cache's capacity) and the images of each window shuffled together, so every
    shard is loaded once per pass. Any other source gets a plain random permutation.
    """
    if not isinstance(source, ParquetShards):
        return torch.randperm(len(source), generator=generator)
    window = window or source.cache_shards
    shard_order = torch.randperm(len(source.shards), generator=generator).tolist()
    parts = []
    for first in range(0, len(shard_order), window):
        members = torch.cat(
            [
                torch.arange(int(source.starts[k]), int(source.starts[k + 1]))
                for k in shard_order[first : first + window]
            ]
        )
        parts.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(parts)
