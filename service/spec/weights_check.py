"""Whether a spec's weights files exist and fit its backbones, checked before anything runs.

Part of the data check (``service.spec.data_check.data_problems``: ``dmsweep validate
--check-data``, ``dmsweep run``'s pre-flight, the service's admission). A weights file that does
not fit would otherwise fail every trial of the sweep on its worker, one after another; a
Co-Tuning cell whose file has no classifier would lack its source head. Each file is loaded into
the backbone as its trials build it (``trainers.weights``), once per backbone, class count and
image size, so the errors are those a trial would raise: they name the file and the first
tensor that does not fit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from service.spec.cells import trials
from service.spec.model import SweepSpec
from trainers.backbones import build_backbone
from trainers.config import TrainConfig
from trainers.data.datasets import DATASETS, resolve_weights
from trainers.validation import Problem
from trainers.weights import load_weights, read_source_head

# Weights files a make target of this repository writes, by file name: the hint a missing one
# gets. Only files whose make target exists belong here.
MADE_BY = {"smallnet_cifar10_source5.pt": "make tl-pretrain"}


def weights_problems(spec: SweepSpec) -> list[Problem]:
    """A problem at ``backbones.<name>.weights`` per weights file that is missing or does not fit.

    Each distinct (backbone, file, classes, image size, options) is checked once; a Co-Tuning
    cell also needs the file's classifier as its source head.
    """
    problems: list[Problem] = []
    checked: set[tuple[object, ...]] = set()
    missing: set[str] = set()
    for _, _, config in trials(spec):
        weights = config.backbone.weights
        if weights is None:
            continue
        location = ("backbones", config.backbone.name, "weights")
        path = resolve_weights(weights)
        if not path.is_file():
            if weights not in missing:
                missing.add(weights)
                problems.append(Problem(location, _missing(path)))
            continue
        co_tuning = config.algorithm == "co_tuning"
        key = (
            config.backbone.name,
            str(path),
            _num_classes(config),
            _image_size(config),
            repr(sorted(config.backbone.options.items())),
            co_tuning,
        )
        if key in checked:
            continue
        checked.add(key)
        problem = _fit_problem(config, path, co_tuning)
        if problem is not None:
            problems.append(Problem(location, problem))
    return problems


def _missing(path: Path) -> str:
    made_by = MADE_BY.get(path.name)
    hint = f"; run `{made_by}` to make it" if made_by else ""
    return f"weights file {path} does not exist{hint}"


def _num_classes(config: TrainConfig) -> int:
    """The classes the trial's network is built for (``data.classes`` keeps some)."""
    data = config.data
    if data.classes is not None:
        return len(data.classes)
    if data.name == "synthetic":
        return data.num_classes or DATASETS["synthetic"].num_classes
    return DATASETS[data.name].num_classes


def _image_size(config: TrainConfig) -> int:
    return config.data.image_size or DATASETS[config.data.name].image_size


def _fit_problem(config: TrainConfig, path: Path, co_tuning: bool) -> str | None:
    """Why the file does not fit the trial's backbone (None: it fits)."""
    try:
        model = build_backbone(
            config.backbone.name,
            _num_classes(config),
            _image_size(config),
            **config.backbone.options,
        )
        if co_tuning:
            read_source_head(model, path)  # the first mismatching tensor, or no source head
        with warnings.catch_warnings():
            # A classifier of another size is replaced by a fresh one: a trial's warning, not
            # a problem of the spec.
            warnings.simplefilter("ignore")
            load_weights(model, path)
    except ValueError as error:
        return str(error)
    return None
