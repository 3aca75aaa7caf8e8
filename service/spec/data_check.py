"""Whether the data of a spec's grid can be found: each data set's folder exists."""

from __future__ import annotations

from service.spec.model import SweepSpec
from service.spec.weights_check import weights_problems
from service.storage.bucket_path import BucketPath
from trainers.data.datasets import DATASETS, data_location, is_synthetic
from trainers.validation import Location, Problem


def data_problems(spec: SweepSpec) -> list[Problem]:
    """A problem at ``data.<name>.root`` per data set of the grid whose folder is missing.

    Synthetic data needs none; a data set without a root lives at ``$DMSWEEP_DATA_ROOT/<name>``
    (``trainers.data.datasets.default_root``). Then the weights files: each must exist and fit
    its backbone (``service.spec.weights_check``).
    """
    problems: list[Problem] = []
    for name in spec.grid.dataset:
        settings = spec.data.get(name)
        if is_synthetic(name, settings.source if settings is not None else None):
            continue
        location = ("data", name, "root")
        try:
            folder = data_location(name, settings.root if settings is not None else None)
        except ValueError as error:
            problems.append(Problem(location, str(error)))
            continue
        source = (settings.source if settings is not None else None) or DATASETS[
            name
        ].default_source
        if isinstance(folder, str):
            problems += _bucket_problems(location, folder, source)
        elif not folder.is_dir():
            problems.append(Problem(location, f"data folder {folder} does not exist"))
    return problems + weights_problems(spec)


def _bucket_problems(location: Location, uri: str, source: str) -> list[Problem]:
    """A bucket prefix holds Parquet shards only, and must hold some.

    It is listed: the process that checks (the sweep's driver, the service) needs the bucket's
    credentials, as the trials do.
    """
    if source != "parquet":
        return [
            Problem(
                location,
                f"{uri} is a bucket prefix: a bucket holds Parquet shards only (source: parquet), "
                f"not the {source} source's files",
            )
        ]
    try:
        found = BucketPath(uri).is_dir()
    except (OSError, ValueError) as error:
        return [Problem(location, f"bucket prefix {uri} cannot be read: {error}")]
    return [] if found else [Problem(location, f"bucket prefix {uri} holds nothing")]
