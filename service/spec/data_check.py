"""Whether the data of a spec's grid can be found: each data set's folder exists."""

from __future__ import annotations

from service.spec.model import SweepSpec
from trainers.data.datasets import is_synthetic, resolve_root
from trainers.validation import Problem


def data_problems(spec: SweepSpec) -> list[Problem]:
    """A problem at ``data.<name>.root`` per data set of the grid whose folder is missing.

    Synthetic data needs none; a data set without a root lives at ``$DMSWEEP_DATA_ROOT/<name>``
    (``trainers.data.datasets.default_root``).
    """
    problems: list[Problem] = []
    for name in spec.grid.dataset:
        settings = spec.data.get(name)
        if is_synthetic(name, settings.source if settings is not None else None):
            continue
        location = ("data", name, "root")
        try:
            folder = resolve_root(name, settings.root if settings is not None else None)
        except ValueError as error:
            problems.append(Problem(location, str(error)))
            continue
        if not folder.is_dir():
            problems.append(Problem(location, f"data folder {folder} does not exist"))
    return problems
