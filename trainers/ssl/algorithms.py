"""The algorithm a semi-supervised trial trains with, built from its ``TrainConfig``."""

from __future__ import annotations

from trainers.config import TrainConfig
from trainers.ssl.base import SemiSupervisedAlgorithm
from trainers.ssl.labelled_only import LabelledOnly


def build_algorithm(
    config: TrainConfig, num_classes: int, unlabelled_images: int
) -> SemiSupervisedAlgorithm:
    """``config.algorithm`` with its settings; ``unlabelled_images``: the unlabelled set's size."""
    if config.algorithm == "labelled_only":
        return LabelledOnly()
    raise ValueError(f"algorithm {config.algorithm!r} is not a semi-supervised algorithm")
