"""A location as the user gives it (a path or ``s3://...``) and the writes every place needs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from service.storage.bucket_path import BucketPath
from trainers.data.buckets import is_bucket_uri

# A sweep's folder, file or storage root: on this machine (or a shared volume), or in a bucket.
AnyPath = Union[Path, BucketPath]  # noqa: UP007 (a runtime alias: Python 3.10's | on classes)


def as_path(location: str | Path | BucketPath) -> AnyPath:
    """``s3://...`` as a ``BucketPath``, anything else as a ``Path`` (``~`` expanded)."""
    if isinstance(location, (Path, BucketPath)):
        return location
    if is_bucket_uri(location):
        return BucketPath(location)
    return Path(location).expanduser()


def absolute(location: str | Path | BucketPath) -> AnyPath:
    """``as_path``, a local path made absolute and resolved (a bucket URI is absolute)."""
    path = as_path(location)
    return path if isinstance(path, BucketPath) else path.resolve()


def write_whole(path: AnyPath, text: str) -> None:
    """Write ``text`` so that a reader never sees half of it (a process killed mid-write).

    A local file is written under a temporary name and renamed; an object is written whole by
    the store itself.
    """
    if isinstance(path, BucketPath):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def append_text(path: AnyPath, text: str) -> None:
    """``text`` at the end of a file (an object is rewritten: ``BucketPath.append_text``)."""
    if isinstance(path, BucketPath):
        path.append_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(text)


@contextlib.contextmanager
def local_file(path: AnyPath) -> Iterator[Path]:
    """A local file with the contents (and name) of ``path`` while the context lasts.

    For what takes only local files (MLflow's ``log_artifact``): a bucket's object is
    downloaded into a temporary folder, a local file is itself.
    """
    if isinstance(path, Path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="dmsweep-") as scratch:
        local = Path(scratch) / path.name
        local.write_bytes(path.read_bytes())
        yield local


def matching(folder: AnyPath, pattern: str) -> list[AnyPath]:
    """The entries of ``folder`` whose names match ``pattern`` (``*.json``), sorted by name."""
    found: list[AnyPath] = list(folder.glob(pattern))
    return sorted(found, key=lambda path: path.name)
