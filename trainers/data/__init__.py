"""Data sources for training runs.

Each source gives uint8 images (N, 3, H, W) through ``read``, int64 labels (-1: no label) and
the class names (:class:`ImageSource`); augmentation and normalisation happen on batches, on
the training device. :func:`open_dataset` opens a split of a data set named in
:data:`DATASETS`; :func:`prepare` converts a published layout into an ImageFolder or Parquet.
The synthetic generator is ``trainers.data.synthetic.synthetic`` (not re-exported here, so that
``trainers.data.synthetic`` stays the module).

The names below are loaded on first use (PEP 562): importing a light submodule such as
``trainers.data.buckets`` (the service's storage paths, the CLI's client commands) must not
import torch, which the sources need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.data.base import ImageSet, ImageSource, SourceView
    from trainers.data.cifar import load_cifar
    from trainers.data.datasets import DATASETS, DatasetInfo, open_dataset
    from trainers.data.imagefolder import ImageFiles, load_imagefolder
    from trainers.data.layouts import LAYOUTS, prepare
    from trainers.data.parquet import ParquetShards, shard_local_order, write_parquet_shards
    from trainers.data.sampling import label_fraction, subset

_MODULE_OF = {
    "DATASETS": "datasets",
    "LAYOUTS": "layouts",
    "DatasetInfo": "datasets",
    "ImageFiles": "imagefolder",
    "ImageSet": "base",
    "ImageSource": "base",
    "ParquetShards": "parquet",
    "SourceView": "base",
    "label_fraction": "sampling",
    "load_cifar": "cifar",
    "load_imagefolder": "imagefolder",
    "open_dataset": "datasets",
    "prepare": "layouts",
    "shard_local_order": "parquet",
    "subset": "sampling",
    "write_parquet_shards": "parquet",
}

__all__ = [
    "DATASETS",
    "LAYOUTS",
    "DatasetInfo",
    "ImageFiles",
    "ImageSet",
    "ImageSource",
    "ParquetShards",
    "SourceView",
    "label_fraction",
    "load_cifar",
    "load_imagefolder",
    "open_dataset",
    "prepare",
    "shard_local_order",
    "subset",
    "write_parquet_shards",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
