"""Sweep specs: a YAML grid of the paper's benchmarks, expanded into ``TrainConfig`` trials.

A *cell* is one (dataset, backbone, method, loss) combination, e.g. one entry of Table 1; a
*trial* is a cell with one seed (the paper reports the mean of three trials, Sec. 4) or, when
the spec has a ``search`` section, one sampled setting (the eta / xi / t grids of Sec. 4.5).

Hyperparameters of a cell, per key, from the first that sets it: the matching ``overrides``
(later ones win), the spec's top-level ``hyperparameters``, then the paper's defaults
(``service.defaults``, appendix A.3). Every error names the field path and what is allowed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import timm
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service import defaults
from trainers.backbones import DMSWEEP_BACKBONES
from trainers.config import (
    METHODS,
    BackboneConfig,
    DataConfig,
    EvalConfig,
    TrainConfig,
    describe_errors,
)
from trainers.data.datasets import DATASETS, ROOT_VARIABLE
from trainers.objectives import LOSSES
from trainers.recipes import RECIPES, get_recipe

MAX_SEEDS = 100
MAX_TRIALS = 10_000
HYPERPARAMETERS = ("alpha", "eta", "xi", "t")
SEARCHABLE = ("eta", "xi", "t", "alpha", "lr", "weight_decay")
AXES = ("dataset", "backbone", "method", "loss")
# Shown when a cell fails TrainConfig validation; more would drown the first ones.
_MAX_CELL_ERRORS = 10

# What each numeric setting may be (appendix A.3 / Eq. 2-3 of the losses: eta weighs the
# decoupled term, xi scales the target, t is a temperature; alpha is Beta(alpha, alpha)'s).
_RULES: dict[str, tuple[Any, str]] = {
    "alpha": (lambda v: v > 0, "> 0"),
    "eta": (lambda v: v >= 0, ">= 0"),
    "xi": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "t": (lambda v: v >= 0, ">= 0"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
}

Loc = tuple[str | int, ...]


def _raise(problems: list[tuple[Loc, str]], title: str) -> None:
    """Raise one ValidationError with a line per (field path, message)."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError("sweep_spec", "{message}", {"message": message}),
                    loc=loc,
                    input=None,
                )
                for loc, message in problems
            ],
        )


def _value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for the setting ``name``, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number; got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number (no NaN or infinity); got {value!r}"
    check, allowed = _RULES[name]
    if not check(value):
        return f"{name} must be {allowed}; got {value!r}"
    return None


def _non_finite(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """Every NaN or infinite number inside ``value``, by path (recipe values are nested)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(loc, f"must be a finite number (no NaN or infinity); got {value!r}")]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite(v, (*loc, str(k)))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite(v, (*loc, i))]
    return []


def _recipe_problems(recipe: str, overrides: dict[str, Any], loc: Loc) -> list[tuple[Loc, str]]:
    problems = _non_finite(overrides, loc)
    if not problems:
        try:
            get_recipe(recipe, overrides)  # names an unknown or invalid field
        except ValueError as error:
            problems.append((loc, str(error)))
    return problems


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
        later = " (dynamic policies are not implemented yet)" if name in defaults.DYNAMIC else ""
        raise ValueError(f"unknown method {name!r}{later}; allowed: {', '.join(METHODS)}")
    return name


def _check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    return name


DatasetName = Annotated[str, AfterValidator(_check_dataset)]
BackboneName = Annotated[str, AfterValidator(_check_backbone)]
MethodName = Annotated[str, AfterValidator(_check_method)]
LossName = Annotated[str, AfterValidator(_check_loss)]


def _unique(values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"values must be unique; repeated: {', '.join(repeated)}")
    return values


# --- the model -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Grid(_Strict):
    """The axes whose product gives the cells, and the seeds every cell is trained with."""

    dataset: Annotated[list[DatasetName], AfterValidator(_unique)] = Field(
        min_length=1, description=f"data sets: {', '.join(DATASETS)}"
    )
    backbone: Annotated[list[BackboneName], AfterValidator(_unique)] = Field(
        min_length=1,
        description=f"backbones: {', '.join(DMSWEEP_BACKBONES)} or timm model names",
    )
    method: Annotated[list[MethodName], AfterValidator(_unique)] = Field(
        min_length=1, description=f"mixing methods: {', '.join(METHODS)}"
    )
    loss: Annotated[list[LossName], AfterValidator(_unique)] = Field(
        min_length=1, description=f"losses: {', '.join(LOSSES)}"
    )
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], AfterValidator(_unique)] = Field(
        default_factory=lambda: [0],
        min_length=1,
        max_length=MAX_SEEDS,
        description=f"seeds, one trial per cell each (1 to {MAX_SEEDS}, unique, >= 0)",
    )


class Hyperparameters(_Strict):
    """Mixing and loss hyperparameters; each applies only to the cells that use it."""

    alpha: float | None = Field(None, description="Beta(alpha, alpha) of the mixing policy; > 0")
    eta: float | None = Field(None, description="DM(CE) weight of the decoupled term; >= 0")
    xi: float | None = Field(None, description="DM(BCE) target scale; in (0, 1]")
    t: float | None = Field(None, description="DM(BCE) temperature; >= 0")

    @field_validator("alpha", "eta", "xi", "t")
    @classmethod
    def _check(cls, value: float | None, info: Any) -> float | None:
        problem = None if value is None else _value_problem(info.field_name, value)
        if problem:
            raise ValueError(problem)
        return value

    def given(self) -> dict[str, float]:
        """The hyperparameters that are set."""
        return {
            k: v for k, v in self.model_dump().items() if k in HYPERPARAMETERS and v is not None
        }


class Match(_Strict):
    """Selects cells: every axis given must hold one of its values; absent axes match all."""

    dataset: list[str] | None = Field(None, description="data set names (a name or a list)")
    backbone: list[str] | None = Field(None, description="backbone names (a name or a list)")
    method: list[str] | None = Field(None, description="method names (a name or a list)")
    loss: list[str] | None = Field(None, description="loss names (a name or a list)")

    @field_validator("dataset", "backbone", "method", "loss", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def matches(self, cell: Cell) -> bool:
        """Whether ``cell`` holds one of the given values on every axis given."""
        return all(
            getattr(self, axis) is None or getattr(cell, axis) in getattr(self, axis)
            for axis in AXES
        )


class CellSettings(Hyperparameters):
    """What an override sets on the cells it matches."""

    recipe_overrides: dict[str, Any] = Field(
        default_factory=dict, description="recipe fields, merged over the spec's recipe_overrides"
    )
    epochs: int | None = Field(None, ge=1, description="epochs of these cells")


class CellOverride(_Strict):
    """Settings for some cells (appendix A.3 sets other alpha / eta for some methods)."""

    match: Match = Field(description="which cells")
    set: CellSettings = Field(description="alpha / eta / xi / t, recipe_overrides, epochs")


# The DataConfig fields but `name`: the data set's name is the key of `SweepSpec.data`.
DataSettings = create_model(
    "DataSettings",
    __base__=_Strict,
    __doc__="Where a data set lives and which part of it is used (DataConfig without name).",
    **{k: (f.annotation, f) for k, f in DataConfig.model_fields.items() if k != "name"},
)
BackboneSettings = create_model(
    "BackboneSettings",
    __base__=_Strict,
    __doc__="Options and initial weights of a backbone (BackboneConfig without name).",
    **{k: (f.annotation, f) for k, f in BackboneConfig.model_fields.items() if k != "name"},
)


class Range(_Strict):
    """A continuous search range [low, high], sampled on a log scale if ``log``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers (no NaN or infinity)")
        if not self.low < self.high:
            raise ValueError(f"need low < high; got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got {self.low}")
        return self


class Scheduler(_Strict):
    """Early stopping of trials: Ray Tune's ASHA."""

    type: Literal["asha"] = Field(description="asha (the only scheduler so far)")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs at least")
    max_t: int | None = Field(None, ge=1, description="epochs at most; default: the spec's epochs")
    reduction_factor: float = Field(4, gt=1, description="ASHA's eta (Ray Tune's default 4)")


class Search(_Strict):
    """Optuna search per cell: one study per cell, named ``<sweep id>:<cell id>``."""

    parameters: dict[
        Literal["eta", "xi", "t", "alpha", "lr", "weight_decay"], list[float] | Range
    ] = Field(
        min_length=1,
        description="each a list of values (categorical) or {low, high, log} (a range); lr and "
        "weight_decay replace the recipe's",
    )
    sampler: Literal["grid", "tpe"] = Field(
        "tpe", description="grid (every parameter categorical) or tpe"
    )
    num_samples: int | None = Field(
        None, ge=1, description="settings per cell and seed; default with grid: the grid's size"
    )
    metric: str = Field("val_top1", description="what the search optimises")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    scheduler: Scheduler | None = Field(None, description="null: every trial runs to the end")
    storage: str | None = Field(
        None, description="Optuna RDB URL; default: a sqlite file under the sweep's storage_path"
    )

    @model_validator(mode="after")
    def _check(self) -> Search:
        problems: list[tuple[Loc, str]] = []
        for name, space in self.parameters.items():
            if isinstance(space, Range):
                for end in ("low", "high"):
                    problem = _value_problem(name, getattr(space, end))
                    if problem:
                        problems.append((("parameters", name, end), problem))
            elif not space:
                problems.append((("parameters", name), "give at least one value"))
            else:
                for index, value in enumerate(space):
                    problem = _value_problem(name, value)
                    if problem:
                        problems.append((("parameters", name, index), problem))
                if len(set(space)) != len(space):
                    problems.append((("parameters", name), "values must be unique"))
        if self.sampler == "grid":
            ranges = [n for n, s in self.parameters.items() if isinstance(s, Range)]
            if ranges:
                problems.append(
                    (
                        ("sampler",),
                        f"the grid sampler needs lists of values; {', '.join(ranges)} "
                        "is a range: use sampler tpe, or list the values",
                    )
                )
            else:
                size = self.grid_size()
                if self.num_samples is None:
                    self.num_samples = size
                elif self.num_samples > size:
                    problems.append(
                        (
                            ("num_samples",),
                            f"the grid has {size} settings; num_samples must be <= {size}",
                        )
                    )
        elif self.num_samples is None:
            problems.append((("num_samples",), "required with sampler tpe (an int >= 1)"))
        _raise(problems, "Search")
        return self

    def grid_size(self) -> int:
        """The number of settings of the categorical grid (ranges count as one)."""
        return math.prod(len(s) if isinstance(s, list) else 1 for s in self.parameters.values())


class Resources(_Strict):
    """What each trial gets from the Ray cluster."""

    workers_per_trial: int = Field(1, ge=1, description="data-parallel workers of one trial")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0: CPU only)")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs per worker")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="trials at once; null: as many as the cluster fits"
    )


_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class SweepSpec(_Strict):
    """A sweep: a grid of cells, their settings, optional search, and resources."""

    name: str = Field(description="letters, digits, '.', '_' and '-'")
    grid: Grid = Field(description="the axes of the cells and the seeds")
    recipe: str = Field("cifar", description=f"training recipe: {', '.join(RECIPES)}")
    recipe_overrides: dict[str, Any] = Field(
        default_factory=dict, description="recipe fields replaced in every cell"
    )
    epochs: int | None = Field(None, ge=1, description="default: the recipe's")
    batch_size: int | None = Field(None, ge=1, description="global; default: the recipe's")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="what is measured")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="alpha / eta / xi / t for every cell they apply to (over the defaults)",
    )
    overrides: list[CellOverride] = Field(
        default_factory=list, description="per-cell settings; later ones win"
    )
    exclude: list[Match] = Field(default_factory=list, description="cells left out")
    data: dict[str, DataSettings] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description=f"per data set of the grid; default root: ${ROOT_VARIABLE}/<data set>",
    )
    backbones: dict[str, BackboneSettings] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="per backbone of the grid: options, weights"
    )
    search: Search | None = Field(None, description="Optuna search per cell; null: seeds only")
    resources: Resources = Field(default_factory=Resources, description="per trial")
    storage_path: str = Field("./runs", description="where results and checkpoints go")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null: a local sqlite store chosen by the engine"
    )

    @field_validator("storage_path")
    @classmethod
    def _check_storage_path(cls, path: str) -> str:
        # Trial records, logs and the Optuna file are written with plain file I/O; an object
        # store would need them through pyarrow's filesystems, which is not built yet.
        if "://" in path:
            raise ValueError(
                f"storage_path must be a local folder or a shared volume mounted on every node; "
                f"got {path!r} (object stores such as s3:// are not supported yet)"
            )
        return path

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"name may contain only letters, digits, '.', '_' and '-'; got {name!r}"
            )
        return name

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        problems = self._settings_problems()
        _raise(problems, "SweepSpec")  # the cells below need known names and a valid recipe
        cells = expand(self)
        if not cells:
            problems.append((("exclude",), "the exclude rules remove every cell of the grid"))
        elif len(cells) * len(self.grid.seeds) > MAX_TRIALS:
            problems.append(
                (
                    ("grid",),
                    f"{len(cells)} cells x {len(self.grid.seeds)} seeds = "
                    f"{len(cells) * len(self.grid.seeds)} trials; at most {MAX_TRIALS:,}",
                )
            )
        _raise(problems, "SweepSpec")
        problems += self._effect_problems(cells)
        problems += _cell_problems(self, cells)
        if self.search is not None and self.search.scheduler is not None:
            scheduler = self.search.scheduler
            if scheduler.max_t is None:
                scheduler.max_t = (
                    self.epochs or get_recipe(self.recipe, self.recipe_overrides).epochs
                )
            if scheduler.grace_period > scheduler.max_t:
                problems.append(
                    (
                        ("search", "scheduler", "grace_period"),
                        f"must be <= max_t ({scheduler.max_t})",
                    )
                )
        _raise(problems, "SweepSpec")
        return self

    def _settings_problems(self) -> list[tuple[Loc, str]]:
        """Names and recipes, before any cell is built."""
        problems: list[tuple[Loc, str]] = []
        if self.recipe not in RECIPES:
            problems.append(
                (("recipe",), f"unknown recipe {self.recipe!r}; allowed: {', '.join(RECIPES)}")
            )
            return problems
        problems += _recipe_problems(self.recipe, self.recipe_overrides, ("recipe_overrides",))
        for index, override in enumerate(self.overrides):
            loc: Loc = ("overrides", index, "set", "recipe_overrides")
            own = _non_finite(override.set.recipe_overrides, loc)
            problems += own
            if override.set.recipe_overrides and not own:
                merged = {**self.recipe_overrides, **override.set.recipe_overrides}
                try:
                    get_recipe(self.recipe, merged)
                except ValueError as error:
                    problems.append((loc, str(error)))
            problems += self._match_problems(override.match, ("overrides", index, "match"))
        for index, rule in enumerate(self.exclude):
            problems += self._match_problems(rule, ("exclude", index))
        for key in self.data:
            if key not in self.grid.dataset:
                problems.append(
                    ((("data", key)), f"not in grid.dataset ({', '.join(self.grid.dataset)})")
                )
        for key in self.backbones:
            if key not in self.grid.backbone:
                problems.append(
                    (
                        (("backbones", key)),
                        f"not in grid.backbone ({', '.join(self.grid.backbone)})",
                    )
                )
        return problems

    def _match_problems(self, match: Match, loc: Loc) -> list[tuple[Loc, str]]:
        # A value outside the grid is a typo: it would silently match nothing.
        problems: list[tuple[Loc, str]] = []
        for axis in AXES:
            allowed = getattr(self.grid, axis)
            for index, value in enumerate(getattr(match, axis) or []):
                if value not in allowed:
                    problems.append(
                        (
                            (*loc, axis, index),
                            f"{value!r} is not in grid.{axis} ({', '.join(map(str, allowed))})",
                        )
                    )
        return problems

    def _effect_problems(self, cells: list[Cell]) -> list[tuple[Loc, str]]:
        """Settings that no cell they reach would use: most likely a mistake in the spec."""
        problems: list[tuple[Loc, str]] = []
        for name in self.hyperparameters.given():
            if not any(_applies(self, name, c) for c in cells):
                problems.append((("hyperparameters", name), _no_effect(name)))
        for index, override in enumerate(self.overrides):
            reached = [c for c in cells if override.match.matches(c)]
            if not reached:
                problems.append((("overrides", index, "match"), "matches no cell (after exclude)"))
                continue
            for name in override.set.given():
                if not any(_applies(self, name, c, override.set.recipe_overrides) for c in reached):
                    problems.append((("overrides", index, "set", name), _no_effect(name)))
        for index, rule in enumerate(self.exclude):
            if not any(rule.matches(c) for c in _grid_cells(self)):
                problems.append((("exclude", index), "matches no cell of the grid"))
        if self.search is not None:
            for name in self.search.parameters:
                if not any(_applies(self, name, c) for c in cells):
                    problems.append((("search", "parameters", name), _no_effect(name)))
        return problems


def _no_effect(name: str) -> str:
    users = {
        "eta": "no cell uses loss dm_ce",
        "xi": "no cell uses loss dm_bce",
        "t": "no cell uses loss dm_bce",
        "alpha": "no cell uses a method that takes alpha (not vanilla, resizemix, or "
        "mixup_cutmix with recipe alphas)",
    }
    return f"{name} has no effect: {users.get(name, 'no cell uses it')}"


def _applies(
    spec: SweepSpec, name: str, cell: Cell, extra_overrides: dict[str, Any] | None = None
) -> bool:
    """Whether the setting ``name`` changes what ``cell`` trains."""
    if name in ("lr", "weight_decay"):
        return True
    if name == "alpha":
        if cell.method != "mixup_cutmix":
            return defaults.takes_alpha(cell.method)
        # mixup_cutmix reads mixing.alpha only when the recipe lacks one of its alphas.
        recipe = get_recipe(spec.recipe, {**cell.recipe_overrides, **(extra_overrides or {})})
        return recipe.mixup_alpha is None or recipe.cutmix_alpha is None
    return name in defaults.LOSS_HYPERPARAMETERS.get(cell.loss, ())


# --- cells and trials ------------------------------------------------------------------------


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


def _grid_cells(spec: SweepSpec) -> list[Cell]:
    g = spec.grid
    return [Cell(*axes) for axes in itertools.product(g.dataset, g.backbone, g.method, g.loss)]


def _resolve(spec: SweepSpec, bare: Cell) -> Cell:
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
    kept = {k: v for k, v in values.items() if _applies(spec, k, cell)}
    return Cell(bare.dataset, bare.backbone, bare.method, bare.loss, kept, recipe_overrides, epochs)


def expand(spec: SweepSpec) -> list[Cell]:
    """The cells in grid order (dataset, backbone, method, loss), exclusions applied."""
    return [
        _resolve(spec, cell)
        for cell in _grid_cells(spec)
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
            "loss": {"name": cell.loss, **{k: hp[k] for k in ("eta", "xi", "t") if k in hp}},
            "recipe": spec.recipe,
            "recipe_overrides": cell.recipe_overrides,
            "epochs": cell.epochs,
            "batch_size": spec.batch_size,
            "seed": seed,
            "checkpoint_every": spec.checkpoint_every,
            "eval": spec.eval.model_dump(),
        }
    )


def _cell_problems(spec: SweepSpec, cells: Iterable[Cell]) -> list[tuple[Loc, str]]:
    """TrainConfig's own checks (e.g. loss ce with a mixing method), one line per failing cell."""
    failing: list[str] = []
    for cell in cells:
        try:
            train_config(spec, cell, spec.grid.seeds[0])
        except ValidationError as error:
            details = "; ".join(
                ".".join(map(str, e["loc"]) or [""])
                + (": " if e["loc"] else "")
                # TrainConfig's own checks are model-level ValueErrors: drop pydantic's prefix.
                + e["msg"].removeprefix("Value error, ")
                for e in error.errors()
            )
            failing.append(f"cell {cell.cell_id}: {details}")
    shown = failing[:_MAX_CELL_ERRORS]
    if len(failing) > len(shown):
        shown.append(f"... and {len(failing) - len(shown)} more failing cells")
    return [(("grid",), line) for line in shown]


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
    return {k: v for k, v in spec.search.parameters.items() if _applies(spec, k, cell)}


def study_name(sweep_id: str, cell: Cell, seed: int | None = None) -> str:
    """The Optuna study of one cell: ``<sweep id>:<cell id>``.

    A spec with several seeds tunes each seed on its own: ``<sweep id>:<cell id>:seed<k>``.
    """
    return f"{sweep_id}:{cell.cell_id}" + (f":seed{seed}" if seed is not None else "")


# --- files, summaries, checks --------------------------------------------------------------


def spec_from_dict(raw: dict[str, Any]) -> SweepSpec:
    """A spec from a mapping; a ValueError with one ``field.path: message`` per problem."""
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise ValueError(describe_errors(error)) from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read a spec from YAML; errors read ``file: field.path: message``.

    The same bounded reader as the service's (``service.spec_input``): size, aliases and
    nesting are limited, so a spec that the service would refuse is refused here too.
    """
    from service.spec_input import SpecInputError, parse_spec

    path = Path(path)
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    try:
        raw = parse_spec(body)
    except SpecInputError as error:
        raise ValueError(f"{path}: {error}") from None
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"{path}: {describe_errors(error)}") from None


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


def check_data(spec: SweepSpec) -> list[str]:
    """Problems finding the data of each data set of the grid; synthetic data needs none."""
    problems: list[str] = []
    for name in spec.grid.dataset:
        settings = spec.data.get(name)
        source = settings.source if settings is not None else None
        if name == "synthetic" or source == "synthetic":
            continue
        root = settings.root if settings is not None else None
        if root is None:
            base = os.environ.get(ROOT_VARIABLE)
            if not base:
                problems.append(
                    f"{name}: no data.{name}.root given and {ROOT_VARIABLE} is not set; set it "
                    f"to the folder that holds {name}/"
                )
                continue
            folder = Path(base).expanduser() / name
        else:
            folder = Path(root).expanduser()
        if not folder.is_dir():
            problems.append(f"{name}: data folder {folder} does not exist")
    return problems


def json_schema() -> dict[str, Any]:
    """The JSON schema of a sweep spec (for editors and ``dmsweep validate``)."""
    return SweepSpec.model_json_schema()


def _type_name(schema: dict[str, Any]) -> str:
    """A JSON schema type as a reader would say it, with links to the sections of models."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type_name(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_name(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"map of name to {_type_name(values)}" if isinstance(values, dict) else "mapping"
    return {"integer": "int", "number": "number", "string": "text", "boolean": "bool"}.get(
        kind, kind
    )


def _section(name: str, schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = [f"## {name}", "", schema.get("description", "").strip(), ""]
    lines += ["| field | type | default | what |", "|---|---|---|---|"]
    for field_name, field_schema in schema.get("properties", {}).items():
        if field_name in required:
            default = "required"
        elif "default" in field_schema:
            default = f"`{json.dumps(field_schema['default'])}`"
        elif "$ref" in field_schema:
            default = "its defaults"
        else:  # a default factory: an empty list or mapping
            default = "`[]`" if field_schema.get("type") == "array" else "`{}`"
        what = field_schema.get("description", "").replace("|", "\\|")
        lines.append(f"| `{field_name}` | {_type_name(field_schema)} | {default} | {what} |")
    return [*lines, ""]


def field_reference() -> str:
    """Every field of a sweep spec as Markdown (``search_spaces/REFERENCE.md``)."""
    schema = json_schema()
    lines = [
        "# Sweep spec reference",
        "",
        "Every field of a sweep spec (`dmsweep validate SPEC` checks one; `dmsweep schema` prints",
        "the JSON schema). Generated by `dmsweep schema --markdown`; a test keeps it current.",
        "",
    ]
    lines += _section("SweepSpec", schema)
    for name, definition in sorted(schema.get("$defs", {}).items()):
        lines += _section(name, definition)
    return "\n".join(lines).rstrip() + "\n"
