"""Data sources for training runs.

Each source gives uint8 images (N, 3, H, W) through ``read``, int64 labels (-1: no label) and
the class names (:class:`ImageSource`); augmentation and normalisation happen on batches, on
the training device. :func:`open_dataset` opens a split of a data set named in
:data:`DATASETS`; :func:`prepare` converts a published layout into an ImageFolder or Parquet.
The synthetic generator is ``trainers.data.synthetic.synthetic`` (not re-exported here, so that
``trainers.data.synthetic`` stays the module).
"""

from trainers.data.base import ImageSet, ImageSource, SourceView
from trainers.data.cifar import load_cifar
from trainers.data.datasets import DATASETS, DatasetInfo, open_dataset
from trainers.data.imagefolder import ImageFiles, load_imagefolder
from trainers.data.layouts import LAYOUTS, prepare
from trainers.data.parquet import ParquetShards, shard_local_order, write_parquet_shards
from trainers.data.sampling import label_fraction, subset

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
