"""Object storage (S3-compatible buckets): the one way dmsweep opens one, through ``pyarrow.fs``.

A location on a bucket is a URI, ``s3://<bucket>/<key prefix>``. Its file system is
``pyarrow.fs.FileSystem.from_uri``, configured only by the standard AWS variables, on every
process that reads or writes (the sweep's driver, its trials, the service):

* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any other source of AWS's credential
  chain: a profile, the node's or pod's role);
* ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``);
* ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-compatible server that is not
  AWS (MinIO, Ceph, moto): ``http://host:port`` or ``https://...``.

Ray Tune and Ray Train open a ``storage_path`` of ``s3://...`` the same way, so the sweep's Tune
state, its trials' checkpoints and its records all reach the same bucket with one configuration.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pyarrow.fs as pafs

# Schemes of object stores: no rename, no append, a whole object is written or not at all.
BUCKET_SCHEMES = ("s3",)


def is_bucket_uri(text: str) -> bool:
    """Whether ``text`` names a place on an object store (``s3://bucket/...``)."""
    return any(text.startswith(f"{scheme}://") for scheme in BUCKET_SCHEMES)


def split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of a bucket URI; the key has no leading or trailing slash.

    A ValueError names what is wrong: another scheme, no bucket, or a ``.``/``..`` or empty
    segment in the key (object keys are not normalised by the store, so ``a/../b`` is a real,
    different key: refused rather than guessed at).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in BUCKET_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in BUCKET_SCHEMES)
        raise ValueError(f"not a bucket URI: {uri!r}; allowed schemes: {allowed}")
    bucket, _, key = rest.partition("/")
    key = key.rstrip("/")
    if not bucket:
        raise ValueError(f"bucket URI {uri!r} names no bucket (expected {scheme}://BUCKET/...)")
    parts = key.split("/") if key else []
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"bucket URI {uri!r}: its key may not have empty, '.' or '..' segments")
    return scheme, bucket, key


# The variables that choose a bucket's server: a file system is kept per bucket and setting.
_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, settings: tuple[str | None, ...]) -> Any:
    # One per bucket and process: opening one reads the credentials and configuration.
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return filesystem


def fs_path(uri: str) -> str:
    """The path of a bucket URI in its file system: ``bucket/key`` (nothing is opened)."""
    _, bucket, key = split_uri(uri)
    return f"{bucket}/{key}" if key else bucket


def bucket_filesystem(uri: str) -> tuple[Any, str]:
    """The file system of a bucket URI and the URI's path in it (``bucket/key``).

    Without ``AWS_REGION``, pyarrow asks the store for the bucket's region when it is opened.
    """
    scheme, bucket, _ = split_uri(uri)
    settings = tuple(os.environ.get(name) for name in _SETTINGS)
    return _filesystem(scheme, bucket, settings), fs_path(uri)
