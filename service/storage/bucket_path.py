"""``BucketPath``: a key of an object store, used where the sweep folder uses a ``pathlib.Path``.

It offers the part of ``pathlib.Path`` that the sweep folder, its records, logs, checkpoints and
the MLflow outbox use (join, name, read, write, list, remove), over ``pyarrow.fs``
(``trainers.data.buckets``: one configuration, the standard AWS variables). What an object store
cannot do is said here, once:

* **Whole objects.** A write replaces the object whole: a reader sees the old object or the new,
  never half of one, so no temporary name and rename is needed. ``append_text`` reads the object
  and writes it back longer: one writer at a time (a trial's log has one: its own process).
* **No folders.** A "folder" is a key prefix that exists while an object lies under it;
  ``mkdir`` makes nothing and ``is_dir`` is true once something was written below.
* **Renames are copies.** ``replace`` copies, then deletes the source.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from trainers.data.buckets import bucket_filesystem, fs_path, split_uri


class BucketPath:
    """``s3://bucket/key``: an object, or the prefix of the objects below it (a folder)."""

    __slots__ = ("_key", "_uri")

    def __init__(self, uri: str) -> None:
        scheme, bucket, key = split_uri(uri)  # a ValueError naming what is wrong
        self._uri = f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"
        self._key = key

    # --- names ------------------------------------------------------------------------------

    def __str__(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"BucketPath({self._uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketPath) and other._uri == self._uri

    def __hash__(self) -> int:
        return hash(self._uri)

    def __lt__(self, other: BucketPath) -> bool:
        return self._uri < other._uri

    def __truediv__(self, part: str | Path) -> BucketPath:
        return BucketPath(f"{self._uri}/{str(part).strip('/')}")

    def __reduce__(self) -> tuple[type[BucketPath], tuple[str]]:
        return (BucketPath, (self._uri,))

    @property
    def name(self) -> str:
        """The last segment of the key ('' for a bucket)."""
        return self._key.rsplit("/", 1)[-1] if self._key else ""

    @property
    def stem(self) -> str:
        """The name without its last suffix."""
        name = self.name
        return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name

    @property
    def parent(self) -> BucketPath:
        """The prefix one segment up (a bucket is its own parent, like ``/``)."""
        return BucketPath(self._uri.rsplit("/", 1)[0]) if self._key else self

    def as_uri(self) -> str:
        """The URI, as ``Path.as_uri`` gives a ``file://`` one."""
        return self._uri

    # --- the store ----------------------------------------------------------------------------

    @property
    def filesystem(self) -> Any:
        """The ``pyarrow.fs`` file system of the bucket (what Ray and pyarrow.parquet take)."""
        return bucket_filesystem(self._uri)[0]

    @property
    def fs_path(self) -> str:
        """``bucket/key``: the path in ``filesystem``."""
        return fs_path(self._uri)

    def _info(self) -> Any:
        return self.filesystem.get_file_info(self.fs_path)

    def exists(self) -> bool:
        """Whether an object, or objects below this prefix, exist."""
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_file(self) -> bool:
        """Whether an object has this key."""
        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        """Whether objects lie below this prefix."""
        return bool(self._info().type == pafs.FileType.Directory)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a prefix exists once an object is below it.

        ``FileExistsError`` unless ``exist_ok`` when objects are below it already.
        """
        if not exist_ok and self.exists():
            raise FileExistsError(f"{self._uri} exists")

    def iterdir(self) -> Iterator[BucketPath]:
        """The objects and prefixes one segment below this prefix (none when it is empty)."""
        selector = pafs.FileSelector(self.fs_path, allow_not_found=True, recursive=False)
        for info in self.filesystem.get_file_info(selector):
            yield self / info.base_name

    def glob(self, pattern: str) -> Iterator[BucketPath]:
        """The entries one segment below whose names match ``pattern`` (``*.json``)."""
        if "/" in pattern:
            raise ValueError(f"BucketPath.glob matches names one level down only; got {pattern!r}")
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    def read_bytes(self) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when there is none."""
        try:
            with self.filesystem.open_input_stream(self.fs_path) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {self._uri}") from None

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The object decoded."""
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> int:
        """Replace the object whole."""
        with self.filesystem.open_output_stream(self.fs_path) as stream:
            stream.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        """Replace the object whole with ``text`` encoded."""
        return self.write_bytes(text.encode(encoding))

    def append_text(self, text: str, encoding: str = "utf-8") -> None:
        """The object rewritten with ``text`` at its end (one writer at a time: see the module)."""
        try:
            before = self.read_bytes()
        except FileNotFoundError:
            before = b""
        self.write_bytes(before + text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object."""
        try:
            self.filesystem.delete_file(self.fs_path)
        except FileNotFoundError:
            if not missing_ok:
                raise FileNotFoundError(f"no object {self._uri}") from None

    def replace(self, target: BucketPath) -> BucketPath:
        """Copy the object to ``target`` (replacing it whole), then delete it here."""
        self.filesystem.move(self.fs_path, target.fs_path)
        return target

    def rmtree(self) -> None:
        """Delete every object below this prefix."""
        if self.is_dir():
            self.filesystem.delete_dir(self.fs_path)

    def upload(self, folder: str | Path) -> None:
        """Copy a local folder's files (recursively) below this prefix."""
        pafs.copy_files(
            str(folder),
            self.fs_path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.filesystem,
        )

    def download(self, folder: str | Path) -> None:
        """Copy the objects below this prefix into a local folder (made when missing)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            self.fs_path,
            str(folder),
            source_filesystem=self.filesystem,
            destination_filesystem=pafs.LocalFileSystem(),
        )
