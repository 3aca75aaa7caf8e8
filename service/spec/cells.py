"""A spec's cells and trials: the grid's product, exclusions and each cell's resolved settings.

A *cell* is one (dataset, backbone, method, loss) combination, e.g. one entry of Table 1; a
*trial* is a cell with one seed (the paper reports the mean of three trials, Sec. 4) or, when
the spec has a ``search`` section, one sampled setting (the eta / xi / t grids of Sec. 4.5).

Hyperparameters of a cell, per key, from the first that sets it: the matching ``overrides``
(later ones win), the spec's top-level ``hyperparameters``, then the paper's defaults
(``service.spec.defaults``, appendix A.3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.spec import defaults
from trainers.config import TrainConfig
from trainers.recipes import get_recipe
from trainers.vocabulary import LOSS_HYPERPARAMETER_NAMES, LOSS_HYPERPARAMETERS, takes_alpha

if TYPE_CHECKING:
    from service.spec.model import Range, SweepSpec

AXES = ("dataset", "backbone", "method", "loss")


def applies(
    spec: SweepSpec, name: str, cell: Cell, extra_overrides: dict[str, Any] | None = None
) -> bool:
    """Whether the setting ``name`` changes what ``cell`` trains."""
    if name in ("lr", "weight_decay"):
        return True
    if name == "alpha":
        if cell.method != "mixup_cutmix":
            return takes_alpha(cell.method)
        # mixup_cutmix reads mixing.alpha only when the recipe lacks one of its alphas.
        recipe = get_recipe(spec.recipe, {**cell.recipe_overrides, **(extra_overrides or {})})
        return recipe.mixup_alpha is None or recipe.cutmix_alpha is None
    return name in LOSS_HYPERPARAMETERS.get(cell.loss, ())


@dataclass(frozen=True)
class Cell:
    """One (dataset, backbone, method, loss) combination with its resolved settings."""

    dataset: str
    backbone: str
    method: str
    loss: str
    hyperparameters: dict[str, float] = field(default_factory=dict, compare=False)
    recipe_overrides: dict[str, Any] = field(default_factory=dict, compare=False)
    epochs: int | None = field(default=None, compare=False)

    @property
    def cell_id(self) -> str:
        """``dataset/backbone/method/loss``, e.g. ``cifar100/resnet18_cifar/mixup/dm_ce``."""
        return "/".join((self.dataset, self.backbone, self.method, self.loss))

    @property
    def slug(self) -> str:
        """The cell id usable as a file name: ``/`` replaced by ``__``."""
        return self.cell_id.replace("/", "__")


def grid_cells(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid's product, in grid order, before exclusions and settings."""
    g = spec.grid
    return [Cell(*axes) for axes in itertools.product(g.dataset, g.backbone, g.method, g.loss)]


def resolve(spec: SweepSpec, bare: Cell) -> Cell:
    """``bare`` with its hyperparameters, recipe overrides and epochs resolved (precedence)."""
    matching = [o.set for o in spec.overrides if o.match.matches(bare)]
    recipe_overrides = dict(spec.recipe_overrides)
    epochs = spec.epochs
    for settings in matching:
        recipe_overrides.update(settings.recipe_overrides)
        epochs = settings.epochs if settings.epochs is not None else epochs
    values = defaults.resolve_hyperparameters(bare.dataset, bare.backbone, bare.method, bare.loss)
    values.update(spec.hyperparameters.given())
    for settings in matching:
        values.update(settings.given())
    cell = Cell(bare.dataset, bare.backbone, bare.method, bare.loss, {}, recipe_overrides, epochs)
    kept = {k: v for k, v in values.items() if applies(spec, k, cell)}
    return Cell(bare.dataset, bare.backbone, bare.method, bare.loss, kept, recipe_overrides, epochs)


def expand(spec: SweepSpec) -> list[Cell]:
    """The cells in grid order (dataset, backbone, method, loss), exclusions applied."""
    return [
        resolve(spec, cell)
        for cell in grid_cells(spec)
        if not any(rule.matches(cell) for rule in spec.exclude)
    ]


def train_config(spec: SweepSpec, cell: Cell, seed: int) -> TrainConfig:
    """The ``TrainConfig`` of ``cell`` with ``seed`` (raises pydantic's ValidationError)."""
    hp = cell.hyperparameters
    data = spec.data.get(cell.dataset)
    backbone = spec.backbones.get(cell.backbone)
    return TrainConfig.model_validate(
        {
            "data": {"name": cell.dataset, **(data.model_dump() if data else {})},
            "backbone": {"name": cell.backbone, **(backbone.model_dump() if backbone else {})},
            "mixing": {"method": cell.method, "alpha": hp.get("alpha")},
            "loss": {"name": cell.loss, **{k: hp[k] for k in LOSS_HYPERPARAMETER_NAMES if k in hp}},
            "recipe": spec.recipe,
            "recipe_overrides": cell.recipe_overrides,
            "epochs": cell.epochs,
            "batch_size": spec.batch_size,
            "seed": seed,
            "checkpoint_every": spec.checkpoint_every,
            "eval": spec.eval.model_dump(),
        }
    )


def trials(spec: SweepSpec) -> list[tuple[Cell, int, TrainConfig]]:
    """One (cell, seed, TrainConfig) per cell and seed, cells in grid order.

    With a ``search`` section the TrainConfig holds the defaults; the engine substitutes each
    sampled setting (``search_space`` says which parameters apply to the cell).
    """
    return [
        (cell, seed, train_config(spec, cell, seed))
        for cell in expand(spec)
        for seed in spec.grid.seeds
    ]


def search_space(spec: SweepSpec, cell: Cell) -> dict[str, list[float] | Range]:
    """The search parameters that change what ``cell`` trains (e.g. eta only for dm_ce)."""
    if spec.search is None:
        return {}
    return {k: v for k, v in spec.search.parameters.items() if applies(spec, k, cell)}


def study_name(sweep_id: str, cell: Cell, seed: int | None = None) -> str:
    """The Optuna study of one cell: ``<sweep id>:<cell id>``.

    A spec with several seeds tunes each seed on its own: ``<sweep id>:<cell id>:seed<k>``.
    """
    return f"{sweep_id}:{cell.cell_id}" + (f":seed{seed}" if seed is not None else "")


def total_trials(spec: SweepSpec) -> int:
    """Trials of a sweep: cells x seeds, times the settings per cell when tuning."""
    samples = spec.search.num_samples if spec.search is not None else 1
    return len(expand(spec)) * len(spec.grid.seeds) * (samples or 1)


def summary(spec: SweepSpec) -> dict[str, Any]:
    """What the spec runs, as plain data (``dmsweep validate --json``)."""
    cells = expand(spec)
    out: dict[str, Any] = {
        "name": spec.name,
        "cells": len(cells),
        "trials": len(cells) * len(spec.grid.seeds),
        "seeds": list(spec.grid.seeds),
        "datasets": sorted({c.dataset for c in cells}, key=spec.grid.dataset.index),
        "backbones": sorted({c.backbone for c in cells}, key=spec.grid.backbone.index),
        "methods": sorted({c.method for c in cells}, key=spec.grid.method.index),
        "losses": sorted({c.loss for c in cells}, key=spec.grid.loss.index),
        "recipe": spec.recipe,
        "search": spec.search is not None,
    }
    if spec.search is not None:
        out["sampler"] = spec.search.sampler
        out["samples_per_trial"] = spec.search.num_samples
    return out
