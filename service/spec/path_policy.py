"""What a spec submitted to the service may name: paths under the service's roots only.

A spec run by ``dmsweep run`` on one's own machine may point anywhere; a spec submitted to the
shared service runs with the cluster's permissions, so every path it controls (data roots,
weights files, its storage path, its tracking and Optuna URIs) must lie under the roots the
service was configured with. The service itself decides where a sweep's folder and MLflow runs
go. Each problem names the field path and what is allowed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from service.spec.model import SweepSpec
from service.storage.bucket_path import BucketPath
from service.storage.paths import AnyPath
from trainers.data.buckets import is_bucket_uri
from trainers.data.datasets import default_root, is_synthetic
from trainers.validation import Problem

DEFAULT_STORAGE_PATH = "./runs"


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _in_bucket(value: BucketPath, roots: Sequence[AnyPath]) -> bool:
    """Whether ``value`` is a bucket root or lies below one: whole key segments, same bucket.

    ``s3://data/set`` lies under ``s3://data`` and ``s3://data/set``, never under
    ``s3://data/se`` (a prefix of the key that cuts a segment) or ``s3://data2``.
    """
    text = str(value)
    return any(
        isinstance(root, BucketPath) and (text == str(root) or text.startswith(f"{root}/"))
        for root in roots
    )


def _path_problem(
    value: str, roots: Sequence[AnyPath], what: str, *, buckets: bool = True
) -> str | None:
    """Why ``value`` may not be used, or None. Relative paths are taken under the first root.

    A bucket URI (``s3://bucket/prefix``) must lie under a bucket root (``_in_bucket``), and
    only where ``buckets`` allows one (weights files are read from local paths only).
    """
    allowed = ", ".join(str(r) for r in roots)
    if buckets and is_bucket_uri(value):
        try:
            location = BucketPath(value)
        except ValueError as error:
            return str(error)
        if not any(isinstance(r, BucketPath) for r in roots):
            return (
                f"must be a path under {what} ({allowed or 'none'}), not a URI (no bucket root "
                f"is configured); got {value!r}"
            )
        if not _in_bucket(location, roots):
            return f"must lie under {what} ({allowed}); got {value!r}"
        return None
    if "://" in value or value.startswith(("file:", "s3:", "gs:")):
        kinds = "a path or a bucket URI (s3://...)" if buckets else "a path"
        return f"must be {kinds} under {what}, not another URI; got {value!r}"
    if ".." in PurePosixPath(value).parts:
        return f"may not contain '..'; got {value!r}"
    if not roots:
        return f"the service has no {what} configured; leave it out"
    path = Path(value).expanduser()
    if not path.is_absolute():
        if isinstance(roots[0], BucketPath):
            if not buckets:
                return f"must be an absolute path under {what} ({allowed}); got {value!r}"
            return None  # a relative key below the first root: '..' was refused above
        path = roots[0] / path
    local = [Path(os.path.realpath(r)) for r in roots if isinstance(r, Path)]
    # realpath: a symlink inside a root must not lead outside it
    if not _under(Path(os.path.realpath(path)), local):
        return f"must lie under {what} ({allowed}); got {value!r}"
    return None


def resolve_under(value: str, roots: Sequence[AnyPath]) -> str:
    """``value`` as an absolute path or bucket URI (relative ones under the first root)."""
    if is_bucket_uri(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else roots[0] / str(path))


def path_problems(
    spec: SweepSpec,
    *,
    data_roots: Sequence[AnyPath],
    storage_root: AnyPath,
    tracking_uri: str | None,
) -> list[Problem]:
    """A problem for every path or URI of ``spec`` outside the service's roots."""
    problems: list[Problem] = []
    data_what = "the service's data roots (DMSWEEP_DATA_ROOTS)"
    for name, settings in spec.data.items():
        if settings.root is not None:
            problem = _path_problem(settings.root, data_roots, data_what)
            if problem:
                problems.append(Problem(("data", name, "root"), problem))
    readable = [r for r in (*data_roots, storage_root) if isinstance(r, Path)]
    for name, backbone in spec.backbones.items():
        if backbone.weights is not None:
            what = "the service's local data roots or storage root"
            problem = _path_problem(backbone.weights, readable, what, buckets=False)
            if problem:
                problems.append(Problem(("backbones", name, "weights"), problem))
    if spec.storage_path != DEFAULT_STORAGE_PATH:
        problem = _path_problem(
            spec.storage_path, [storage_root], "the service's storage root (DMSWEEP_STORAGE_ROOT)"
        )
        if problem:
            problems.append(Problem(("storage_path",), problem))
    if spec.tracking_uri is not None and spec.tracking_uri != tracking_uri:
        problems.append(
            Problem(
                ("tracking_uri",),
                # The service's URI is not shown: it may hold a password.
                "the service tracks every sweep in its own MLflow; leave tracking_uri out",
            )
        )
    if spec.search is not None and spec.search.storage is not None:
        problems.append(
            Problem(
                ("search", "storage"),
                # The model lets only a SQLite file through: no credentials to hide here.
                "the service chooses where Optuna studies go (the database its operator names "
                "with DMSWEEP_OPTUNA_STORAGE on the Ray head, else the sweep's folder); leave "
                f"search.storage out (got {spec.search.storage!r})",
            )
        )
    return problems


def resolve_paths(
    raw: dict[str, Any],
    spec: SweepSpec,
    *,
    data_roots: Sequence[AnyPath],
    storage_root: AnyPath,
) -> dict[str, Any]:
    """``raw`` with every path absolute, as the Ray job will read it.

    Relative data roots and weights files are taken under the first data root (weights: or the
    storage root when there is none); a data set of the grid without a root gets
    ``<first data root>/<data set>``, what ``$DMSWEEP_DATA_ROOT`` gives a local run.
    """
    out = copy.deepcopy(raw)
    data = out.setdefault("data", {})
    for name in spec.grid.dataset:
        settings = spec.data.get(name)
        if is_synthetic(name, settings.source if settings is not None else None):
            continue
        if not data_roots:
            continue  # path_problems / data_problems name the missing root
        entry = data.setdefault(name, {}) or {}
        data[name] = entry
        root = entry.get("root")
        first = data_roots[0]
        if root:
            entry["root"] = resolve_under(root, data_roots)
        elif isinstance(first, BucketPath):
            entry["root"] = str(first / name)  # default_root's rule, on a bucket
        else:
            entry["root"] = str(default_root(name, first))
    if not data:
        del out["data"]
    readable = [r for r in (*data_roots, storage_root) if isinstance(r, Path)]
    for name, backbone in spec.backbones.items():
        if backbone.weights is not None:
            out["backbones"][name]["weights"] = resolve_under(backbone.weights, readable)
    out.pop("storage_path", None)  # the service passes its own with --storage-path
    return out
