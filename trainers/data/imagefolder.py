"""ImageFolder: ``root/<split>/<class>/*.{jpg,jpeg,png}``, classes sorted by folder name.

Each file is kept as it is. ``open_image`` decodes one file at its own size (PIL, converted to
RGB): the per-sample path (:mod:`trainers.data.loader`) crops it in loader workers, so that
RandomResizedCrop sees the whole original photo (Table 10). ``read`` brings a batch to one
square load size instead: an image already ``image_size`` x ``image_size`` is kept as it is;
any other has its shorter side resized to ``image_size`` (bilinear, antialiased) and is
centre-cropped to a square (the batched path of CIFAR-sized data, and the benchmarks).

Two ways to hold a split:

* in memory (the default for the small-image data sets when the decoded split fits in
  ``IN_MEMORY_LIMIT_BYTES``): every image is decoded once, up front, by a thread pool, into one
  uint8 tensor, and the result is a plain :class:`~trainers.data.base.ImageSet` whose ``read`` is
  one ``index_select``. A corrupt image is found here, before training, and named. CIFAR-10 as
  JPEGs (50,000 images of 32 px) takes a few seconds on two cores; Tiny-ImageNet fits as well.
* lazily (:class:`ImageFiles`: the photo data sets, whose originals vary in size, and any split
  too big to hold): only the file list is read up front; images are decoded when asked for, and
  a corrupt image is named when it is read.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from trainers.data.base import IMAGE_EXTENSIONS, SPLITS, ImageSet, IndexLike, as_index

# A decoded split up to this size is held in memory (4 GiB: Tiny-ImageNet at 64 px is 1.2 GB,
# CUB at 224 px 0.9 GB); ImageNet at 224 px (190 GB) is read lazily.
IN_MEMORY_LIMIT_BYTES = 4 << 30


def default_workers() -> int:
    """Decoding threads: PIL releases the GIL while it decodes and resizes."""
    return max(1, min(8, os.cpu_count() or 1))


def is_image_file(name: str) -> bool:
    """Whether a file name ends in one of the image extensions, in any case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store's friends) are never classes.
    return sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def list_imagefolder(root: str | Path, split: str) -> tuple[list[Path], Tensor, list[str]]:
    """Files, int64 labels and class names of one split, files sorted within each class.

    Checked up front: the root and the split folder exist, there is at least one class folder,
    no class folder is empty, and any other split folder beside it has the same classes (a
    missing class would silently shift every label after it).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        present = [s for s in SPLITS if (root / s).is_dir()]
        raise FileNotFoundError(
            f"split folder {split_dir} does not exist; split folders found in {root}: "
            f"{', '.join(present) or 'none'} (allowed: {', '.join(SPLITS)})"
        )
    classes = _class_folders(split_dir)
    if not classes:
        raise ValueError(f"no class folders in {split_dir}; expected {split_dir}/<class>/<image>")
    for other in SPLITS:
        if other != split and (root / other).is_dir():
            other_classes = _class_folders(root / other)
            if other_classes != classes:
                missing = sorted(set(other_classes) - set(classes))
                extra = sorted(set(classes) - set(other_classes))
                raise ValueError(
                    f"class folders of {split_dir} and {root / other} differ (labels would not "
                    f"match): only in {other}: {missing[:5]}, only in {split}: {extra[:5]}"
                )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        found = []
        for folder, subfolders, names in os.walk(class_dir, followlinks=True):
            # Hidden entries are never images: macOS archives carry "._x.jpg" resource forks.
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            found += [
                Path(folder, file).relative_to(class_dir)
                for file in names
                if is_image_file(file) and not file.startswith(".")
            ]
        found.sort()
        if not found:
            raise ValueError(
                f"class folder {class_dir} holds no images (allowed extensions: "
                f"{', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
        files.extend(class_dir / f for f in found)
        labels.extend([label] * len(found))
    return files, torch.tensor(labels, dtype=torch.long), classes


def to_square(image: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to ``size`` and centre-cropped to a square; kept if already one."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    # One resize of the central square box: the same pixels as resizing the shorter side and
    # then cropping, with a single pass over the image.
    return image.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )


def open_original(data: bytes, name: object) -> Image.Image:
    """Encoded image bytes as a PIL RGB image at their own size; errors name ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")  # convert decodes: the file can be closed afterwards
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {name}: {error}") from error


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (3, size, size); a file PIL cannot decode raises, naming it."""
    try:
        # One read of the whole file: PIL parses JPEG headers with dozens of small reads, which
        # cost more than the decoding of a 32 px image when they go to the file.
        with Image.open(io.BytesIO(path.read_bytes())) as opened:
            if opened.format == "JPEG":
                # Let libjpeg decode at a reduced scale that is still >= size: much faster for
                # large photos, and the resize below does the rest.
                opened.draft("RGB", (size, size))
            image = to_square(opened.convert("RGB"), size)
            return np.asarray(image).transpose(2, 0, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from error


# Below this much work per item a thread pool is slower than one thread: for a 32 px JPEG the
# GIL-held part (header parsing, numpy) dominates and threads only fight over the GIL (measured
# on 2 cores: CIFAR-10 decodes in 2.0 s per 20k images on one thread, 3.5 s on two). A 500 px
# photo takes ~2.5 ms, mostly in libjpeg and the resize, which release the GIL: 2 threads, 2x.
SERIAL_BELOW_S = 0.5e-3


def parallel_fill(
    count: int,
    fill: Callable[[int], object],
    workers: int | None = None,
    chunk: int = 256,
) -> None:
    """Call ``fill(i)`` for every i < count, on a thread pool when that pays; errors re-raised.

    The first 16 items run on the calling thread and are timed: when an item takes less than
    ``SERIAL_BELOW_S`` the rest runs there too, otherwise the rest goes to a thread pool in
    chunks (a future per 32 px image would cost about as much as decoding it).
    """
    workers = workers or default_workers()
    probe = min(count, 16)
    started = time.perf_counter()
    for i in range(probe):
        fill(i)
    per_item = (time.perf_counter() - started) / max(1, probe)
    if workers == 1 or per_item < SERIAL_BELOW_S:
        for i in range(probe, count):
            fill(i)
        return
    # A few chunks per thread, so that one slow chunk does not leave the others idle.
    chunk = max(1, min(chunk, -(-(count - probe) // (4 * workers))))

    def run(start: int) -> None:
        for i in range(start, min(start + chunk, count)):
            fill(i)

    with ThreadPoolExecutor(workers, thread_name_prefix="dmsweep-decode") as pool:
        futures = [pool.submit(run, start) for start in range(probe, count, chunk)]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]


def decode_files(files: Sequence[Path], size: int, workers: int | None = None) -> Tensor:
    """Decode ``files`` into one uint8 tensor (len(files), 3, size, size), in parallel."""
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    out = images.numpy()

    def fill(i: int) -> None:
        out[i] = decode_image(files[i], size)

    parallel_fill(len(files), fill, workers)
    return images


class ImageFiles:
    """A lazily decoded ImageFolder split: ``read`` decodes the files it is asked for."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Tensor,
        classes: list[str],
        image_size: int,
        workers: int | None = None,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = list(files)
        self.labels = labels
        self.classes = classes
        self.image_size = image_size
        self.workers = workers

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: IndexLike) -> Tensor:
        """Decode the images at ``indices``, in that order, as squares of ``image_size``."""
        index = as_index(indices, len(self)).tolist()
        return decode_files([self.files[i] for i in index], self.image_size, self.workers)

    def encoded(self, index: int) -> bytes:
        """The file of image ``index``, byte for byte."""
        return self.files[int(as_index([index], len(self))[0])].read_bytes()

    def open_image(self, index: int) -> Image.Image:
        """Image ``index`` decoded at its own size (the original photo), RGB."""
        path = self.files[int(as_index([index], len(self))[0])]
        return open_original(path.read_bytes(), path)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} images, {len(self.classes)} classes, {self.image_size}px)"


def hold(files: ImageFiles, in_memory: bool | None = None) -> ImageSet | ImageFiles:
    """``files`` decoded into memory, or left lazy (``in_memory=None``: when it fits)."""
    if in_memory is None:
        in_memory = len(files) * 3 * files.image_size**2 <= IN_MEMORY_LIMIT_BYTES
    if not in_memory:
        return files
    images = decode_files(files.files, files.image_size, files.workers)
    return ImageSet(images, files.labels, files.classes)


def load_imagefolder(
    root: str | Path,
    split: str,
    image_size: int,
    *,
    in_memory: bool | None = None,
    workers: int | None = None,
) -> ImageSet | ImageFiles:
    """One ImageFolder split at load size ``image_size``: in memory or lazy (see the module).

    ``in_memory=None`` decodes into memory when the decoded split fits in
    ``IN_MEMORY_LIMIT_BYTES``; True or False forces one way.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    files, labels, classes = list_imagefolder(root, split)
    return hold(ImageFiles(files, labels, classes, image_size, workers), in_memory)
