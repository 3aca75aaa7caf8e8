"""A spec's grid (the axes whose product gives the cells) and the matches that select cells.

Every name on an axis is checked against what dmsweep knows (data sets, backbones, methods,
losses, algorithms) with an error that lists what is allowed.
"""

from __future__ import annotations

from typing import Annotated, Any

import timm
from pydantic import AfterValidator, Field, field_validator

from service.spec.cells import AXES, Cell
from service.spec.search import MAX_LIST
from trainers.backbones import DMSWEEP_BACKBONES
from trainers.data.datasets import DATASETS
from trainers.limits import MAX_SEED
from trainers.validation import StrictModel
from trainers.vocabulary import ALGORITHMS, AS_SIDES, DEFAULT_AS_SIDE, LOSSES, METHODS, AsSide

MAX_SEEDS = 100
# What an override's or exclusion's match may name: the grid's axes.
MATCH_AXES = (*AXES, "algorithm", "labels", "as_side")


# --- names -------------------------------------------------------------------------------------


def _check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    return name


def _check_backbone(name: str) -> str:
    if name not in DMSWEEP_BACKBONES and not timm.is_model(name):
        raise ValueError(
            f"unknown backbone {name!r}; allowed: {', '.join(DMSWEEP_BACKBONES)} or any timm "
            "model name (timm.list_models())"
        )
    return name


def _check_method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return name


def _check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    return name


def _check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
    return name


def _check_labels(amount: float) -> float:
    if isinstance(amount, bool) or not amount > 0:
        raise ValueError(f"must be a fraction in (0, 1] or a whole count > 1; got {amount!r}")
    if amount > 1 and not float(amount).is_integer():
        raise ValueError(f"must be a fraction in (0, 1] or a whole count > 1; got {amount!r}")
    return amount


DatasetName = Annotated[str, AfterValidator(_check_dataset)]
AlgorithmName = Annotated[str, AfterValidator(_check_algorithm)]
LabelAmount = Annotated[float, AfterValidator(_check_labels)]
BackboneName = Annotated[str, AfterValidator(_check_backbone)]
MethodName = Annotated[str, AfterValidator(_check_method)]
LossName = Annotated[str, AfterValidator(_check_loss)]


def _unique(values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"values must be unique; repeated: {', '.join(repeated)}")
    return values


class Grid(StrictModel):
    """The axes whose product gives the cells, and the seeds every cell is trained with."""

    dataset: Annotated[list[DatasetName], AfterValidator(_unique)] = Field(
        min_length=1, max_length=MAX_LIST, description=f"data sets: {', '.join(DATASETS)}"
    )
    backbone: Annotated[list[BackboneName], AfterValidator(_unique)] = Field(
        min_length=1,
        max_length=MAX_LIST,
        description=f"backbones: {', '.join(DMSWEEP_BACKBONES)} or timm model names",
    )
    method: Annotated[list[MethodName], AfterValidator(_unique)] = Field(
        min_length=1, max_length=MAX_LIST, description=f"mixing methods: {', '.join(METHODS)}"
    )
    loss: Annotated[list[LossName], AfterValidator(_unique)] = Field(
        min_length=1, max_length=MAX_LIST, description=f"losses: {', '.join(LOSSES)}"
    )
    algorithm: Annotated[list[AlgorithmName], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["supervised"],
        min_length=1,
        max_length=MAX_LIST,
        description=f"training algorithms: {', '.join(ALGORITHMS)} (default: supervised)",
    )
    labels: (
        dict[
            DatasetName,
            Annotated[
                list[LabelAmount],
                Field(min_length=1, max_length=MAX_LIST),
                AfterValidator(_unique),
            ],
        ]
        | None
    ) = Field(
        None,
        description="per data set, the labels kept: whole counts (> 1) or fractions in (0, 1], "
        "each a cell (Table 7: cifar10: [250, 4000]); takes over from "
        "data.<name>.label_fraction where both are given; a data set without an entry keeps "
        "its data settings' labels",
    )
    as_side: Annotated[list[AsSide], AfterValidator(_unique)] = Field(
        default_factory=lambda: [DEFAULT_AS_SIDE],
        min_length=1,
        max_length=len(AS_SIDES),
        description="the asymmetric strategy's side of lambda for the cells with an AS term: "
        "labelled_minor (lambda <= 0.5, Sec. 3.2; the default), labelled_major (lambda >= "
        "0.5) or none (no AS term: the policy mixes labelled images among themselves, "
        "self_tuning); Table 9's ablation",
    )
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]], AfterValidator(_unique)] = (
        Field(
            default_factory=lambda: [0],
            min_length=1,
            max_length=MAX_SEEDS,
            description=f"seeds, one trial per cell each (1 to {MAX_SEEDS}, unique, >= 0)",
        )
    )

    def labels_of(self, dataset: str) -> list[float | None]:
        """The labels ``dataset``'s cells keep: ``grid.labels``'s, or [None] (the data's)."""
        given = (self.labels or {}).get(dataset)
        return list(given) if given else [None]

    def size(self) -> int:
        """Cells of the axes' product, before exclusions."""
        datasets = sum(len(self.labels_of(d)) for d in self.dataset)
        return (
            datasets
            * len(self.backbone)
            * len(self.algorithm)
            * len(self.method)
            * len(self.loss)
            * len(self.as_side)
        )


class Match(StrictModel):
    """Selects cells: every axis given must hold one of its values; absent axes match all."""

    dataset: list[str] | None = Field(
        None, max_length=MAX_LIST, description="data set names (a name or a list)"
    )
    backbone: list[str] | None = Field(
        None, max_length=MAX_LIST, description="backbone names (a name or a list)"
    )
    method: list[str] | None = Field(
        None, max_length=MAX_LIST, description="method names (a name or a list)"
    )
    loss: list[str] | None = Field(
        None, max_length=MAX_LIST, description="loss names (a name or a list)"
    )
    algorithm: list[str] | None = Field(
        None, max_length=MAX_LIST, description="algorithm names (a name or a list)"
    )
    labels: list[float] | None = Field(
        None, max_length=MAX_LIST, description="labels kept, as in grid.labels (one or a list)"
    )
    as_side: list[str] | None = Field(
        None, max_length=len(AS_SIDES), description="AS sides, as in grid.as_side (one or a list)"
    )

    @field_validator("dataset", "backbone", "method", "loss", "algorithm", "as_side", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("labels", mode="before")
    @classmethod
    def _listify_labels(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) else value

    def matches(self, cell: Cell) -> bool:
        """Whether ``cell`` holds one of the given values on every axis given."""
        return all(
            getattr(self, axis) is None or getattr(cell, axis) in getattr(self, axis)
            for axis in MATCH_AXES
        )
