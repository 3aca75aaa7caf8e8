"""The sweep spec, a pydantic model: a YAML grid of the paper's benchmarks and its settings.

Every error names the field path and what is allowed. What the spec expands into (cells,
trials) is ``service.spec.cells``; reading one from untrusted text is ``service.spec.reading``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service.spec.cells import (
    Cell,
    applies,
    expand,
    grid_cells,
    labels_text,
    train_config,
)
from service.spec.grid import MATCH_AXES, Grid, Match
from service.spec.search import MAX_LIST, MAX_TRIALS, Search
from trainers.config import (
    BackboneSettings,
    DataSettings,
    EvalConfig,
    MixingSettings,
    SemiSupervisedSettings,
    TransferSettings,
)
from trainers.data.buckets import is_bucket_uri, split_uri
from trainers.data.datasets import ROOT_VARIABLE
from trainers.limits import (
    MAX_BATCH_SIZE,
    MAX_CPUS_PER_WORKER,
    MAX_EPOCHS,
    MAX_GPUS_PER_WORKER,
    MAX_WORKERS_PER_TRIAL,
)
from trainers.recipes import RECIPES, get_recipe
from trainers.validation import Location, Problem, StrictModel, raise_problems
from trainers.vocabulary import (
    AS_SIDES,
    BOUNDS,
    HYPERPARAMETERS,
    STEP_BASED,
    TRANSFER,
)

# Override and exclude rules; Table 2's spec has three.
MAX_RULES = 1_000
# Shown when a cell fails TrainConfig validation; more would drown the first ones.
_MAX_CELL_ERRORS = 10


def _non_finite(value: Any, loc: Location) -> list[Problem]:
    """Every NaN or infinite number inside ``value``, by path (recipe values are nested)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [Problem(loc, f"must be a finite number (no NaN or infinity); got {value!r}")]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite(v, (*loc, str(k)))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite(v, (*loc, i))]
    return []


def _recipe_problems(recipe: str, overrides: dict[str, Any], loc: Location) -> list[Problem]:
    problems = _non_finite(overrides, loc)
    if not problems:
        try:
            get_recipe(recipe, overrides)  # names an unknown or invalid field
        except ValueError as error:
            problems.append(Problem(loc, str(error)))
    return problems


# --- the model -----------------------------------------------------------------------------


class Hyperparameters(StrictModel):
    """Mixing and loss hyperparameters; each applies only to the cells that use it."""

    alpha: float | None = Field(
        None, description=f"Beta(alpha, alpha) of the mixing policy; {BOUNDS['alpha']}"
    )
    eta: float | None = Field(
        None, description=f"DM(CE) weight of the decoupled term; {BOUNDS['eta']}"
    )
    xi: float | None = Field(None, description=f"DM(BCE) target scale; {BOUNDS['xi']}")
    t: float | None = Field(None, description=f"DM(BCE) temperature; {BOUNDS['t']}")

    @field_validator("alpha", "eta", "xi", "t")
    @classmethod
    def _check(cls, value: float | None, info: Any) -> float | None:
        problem = None if value is None else BOUNDS[info.field_name].problem(info.field_name, value)
        if problem:
            raise ValueError(problem)
        return value

    def given(self) -> dict[str, float]:
        """The hyperparameters that are set."""
        return {
            k: v for k, v in self.model_dump().items() if k in HYPERPARAMETERS and v is not None
        }


class CellSettings(Hyperparameters):
    """What an override sets on the cells it matches."""

    recipe_overrides: dict[str, Any] = Field(
        default_factory=dict, description="recipe fields, merged over the spec's recipe_overrides"
    )
    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="epochs of these cells")
    mixing: MixingSettings | None = Field(
        None, description="lambda_mode / saliency_detector of these cells (the ones given)"
    )
    transfer: TransferSettings | None = Field(
        None, description="labelled_mixup / as_threshold of these cells (the ones given)"
    )
    source: str | None = Field(
        None,
        max_length=500,
        description="where these settings come from (a paper line or a configuration's path): "
        "epochs and recipe_overrides with a source are the paper's, and keep the cells "
        "comparable with its numbers",
    )


class CellOverride(StrictModel):
    """Settings for some cells (appendix A.3 sets other alpha / eta for some methods)."""

    match: Match = Field(description="which cells")
    set: CellSettings = Field(description="alpha / eta / xi / t, recipe_overrides, epochs")


class Resources(StrictModel):
    """What each trial gets from the Ray cluster."""

    workers_per_trial: int = Field(
        1, ge=1, le=MAX_WORKERS_PER_TRIAL, description="data-parallel workers of one trial"
    )
    gpus_per_worker: float = Field(
        0, ge=0, le=MAX_GPUS_PER_WORKER, description="GPUs per worker (0: CPU only)"
    )
    cpus_per_worker: float = Field(1, gt=0, le=MAX_CPUS_PER_WORKER, description="CPUs per worker")
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="trials at once; null: as many as the cluster fits"
    )


_NAME = re.compile(r"[A-Za-z0-9._-]+")
# A sweep id is the name, a 16-character UTC stamp and maybe a suffix: well within the store's
# 200-character ids and a file system's 255-byte folder names.
MAX_NAME_LENGTH = 100


class SweepSpec(StrictModel):
    """A sweep: a grid of cells, their settings, optional search, and resources.

    A spec is usually read from YAML with ``service.spec.reading.load_spec``; the smallest one,
    as a mapping::

        SweepSpec.model_validate({"name": "tiny", "grid": {"dataset": ["synthetic"],
            "backbone": ["smallnet"], "method": ["mixup"], "loss": ["mce", "dm_ce"]}})
    """

    name: str = Field(
        description=f"letters, digits, '.', '_' and '-', not starting with '-' or '.'; at most "
        f"{MAX_NAME_LENGTH} characters"
    )
    grid: Grid = Field(description="the axes of the cells and the seeds")
    recipe: str = Field("cifar", description=f"training recipe: {', '.join(RECIPES)}")
    recipe_overrides: dict[str, Any] = Field(
        default_factory=dict, description="recipe fields replaced in every cell"
    )
    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="default: the recipe's")
    batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, description="global; default: the recipe's"
    )
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between checkpoints")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="what is measured")
    mixing: MixingSettings = Field(
        default_factory=MixingSettings,
        description="how every cell's policy draws: lambda_mode (batch, as the paper's "
        "configurations, or sample), saliency_detector",
    )
    semi_supervised: SemiSupervisedSettings = Field(
        default_factory=SemiSupervisedSettings,
        description="steps, evaluation interval and unlabelled ratio of the semi-supervised "
        "cells (grid.algorithm other than supervised; Sec. 4.4)",
    )
    transfer: TransferSettings = Field(
        default_factory=TransferSettings,
        description="settings of the transfer cells (grid.algorithm fine_tuning, bss, co_tuning, "
        "self_tuning; Sec. 4.3): labelled_mixup, as_threshold",
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="alpha / eta / xi / t for every cell they apply to (over the defaults)",
    )
    overrides: list[CellOverride] = Field(
        default_factory=list, max_length=MAX_RULES, description="per-cell settings; later ones win"
    )
    exclude: list[Match] = Field(
        default_factory=list, max_length=MAX_RULES, description="cells left out"
    )
    controls: bool = Field(
        False,
        description="also run, per DM cell, its control: the base loss (mce; mbce for dm_bce) at "
        "the DM cell's alpha, cell id <dataset>/<backbone>/<method>/<loss>/control",
    )
    data: dict[str, DataSettings] = Field(
        default_factory=dict,
        max_length=MAX_LIST,
        description=f"per data set of the grid; default root: ${ROOT_VARIABLE}/<data set>",
    )
    backbones: dict[str, BackboneSettings] = Field(
        default_factory=dict,
        max_length=MAX_LIST,
        description="per backbone of the grid: options, weights",
    )
    search: Search | None = Field(None, description="Optuna search per cell; null: seeds only")
    resources: Resources = Field(default_factory=Resources, description="per trial")
    storage_path: str = Field(
        "./runs",
        description="where results and checkpoints go: a folder (a shared volume on a "
        "cluster) or a bucket prefix, s3://BUCKET/PREFIX",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null: a local sqlite store chosen by the engine"
    )

    @field_validator("storage_path")
    @classmethod
    def _check_storage_path(cls, path: str) -> str:
        # A bucket is reached through pyarrow's file systems (service.storage); any other URI
        # (file:, gs:, http:) has no file system here.
        if is_bucket_uri(path):
            split_uri(path)  # a ValueError naming what is wrong with it
        elif "://" in path:
            raise ValueError(
                f"storage_path must be a folder (a shared volume mounted on every node) or a "
                f"bucket prefix, s3://BUCKET/PREFIX; got {path!r}"
            )
        return path

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"name may contain only letters, digits, '.', '_' and '-'; got {name!r}"
            )
        if name.startswith(("-", ".")):
            # The name becomes part of a command line (the Ray job's entrypoint), where a
            # leading '-' reads as an option, and of a folder name, hidden with a leading '.'
            # ('.' and '..' are not folders of their own at all).
            raise ValueError(f"name must not start with '-' or '.'; got {name!r}")
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"name has {len(name)} characters; at most {MAX_NAME_LENGTH}")
        return name

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        problems = self._settings_problems()
        raise_problems(problems, "SweepSpec")  # the cells below need known names and a valid recipe
        if self.grid.size() > MAX_TRIALS:
            # Checked before any cell is built: the cost of expanding is bounded too.
            grid = self.grid
            counts = [
                sum(len(grid.labels_of(dataset)) for dataset in grid.dataset),
                len(grid.backbone),
                *([len(grid.algorithm)] if len(grid.algorithm) > 1 else []),
                len(grid.method),
                len(grid.loss),
                *([len(grid.as_side)] if len(grid.as_side) > 1 else []),
            ]
            axes = " x ".join(map(str, counts))
            problems.append(
                Problem(
                    ("grid",),
                    f"the axes make {axes} = {self.grid.size():,} cells; at most {MAX_TRIALS:,}",
                )
            )
            raise_problems(problems, "SweepSpec")
        cells = expand(self)
        samples = self.search.num_samples if self.search is not None else None
        trials = len(cells) * len(self.grid.seeds) * (samples or 1)
        if not cells:
            problems.append(
                Problem(("exclude",), "the exclude rules remove every cell of the grid")
            )
        elif trials > MAX_TRIALS:
            per_cell = f" x {samples} settings" if samples else ""
            problems.append(
                Problem(
                    ("grid",),
                    f"{len(cells)} cells x {len(self.grid.seeds)} seeds{per_cell} = "
                    f"{trials:,} trials; at most {MAX_TRIALS:,}",
                )
            )
        raise_problems(problems, "SweepSpec")
        problems += self._effect_problems(cells)
        problems += _cell_problems(self, cells)
        if self.search is not None and self.search.scheduler is not None:
            scheduler = self.search.scheduler
            if scheduler.max_t is None:
                # The longest cell's epochs (a semi-supervised cell's: its intervals).
                default = self.epochs or get_recipe(self.recipe, self.recipe_overrides).epochs
                scheduler.max_t = max(cell.epochs or default for cell in cells)
            if scheduler.grace_period > scheduler.max_t:
                problems.append(
                    Problem(
                        ("search", "scheduler", "grace_period"),
                        f"must be <= max_t ({scheduler.max_t})",
                    )
                )
        raise_problems(problems, "SweepSpec")
        return self

    def _settings_problems(self) -> list[Problem]:
        """Names and recipes, before any cell is built."""
        problems: list[Problem] = []
        if self.recipe not in RECIPES:
            problems.append(
                Problem(
                    ("recipe",), f"unknown recipe {self.recipe!r}; allowed: {', '.join(RECIPES)}"
                )
            )
            return problems
        problems += _recipe_problems(self.recipe, self.recipe_overrides, ("recipe_overrides",))
        if self.controls and self.search is not None and "alpha" in self.search.parameters:
            problems.append(
                Problem(
                    ("controls",),
                    "a control runs the base loss at its DM cell's alpha, but search.parameters "
                    "tunes alpha per cell: drop one of the two",
                )
            )
        for index, override in enumerate(self.overrides):
            loc: Location = ("overrides", index, "set", "recipe_overrides")
            own = _non_finite(override.set.recipe_overrides, loc)
            problems += own
            if override.set.recipe_overrides and not own:
                merged = {**self.recipe_overrides, **override.set.recipe_overrides}
                try:
                    get_recipe(self.recipe, merged)
                except ValueError as error:
                    problems.append(Problem(loc, str(error)))
            problems += self._match_problems(override.match, ("overrides", index, "match"))
        for index, rule in enumerate(self.exclude):
            problems += self._match_problems(rule, ("exclude", index))
        for key in self.data:
            if key not in self.grid.dataset:
                problems.append(
                    Problem(
                        (("data", key)), f"not in grid.dataset ({', '.join(self.grid.dataset)})"
                    )
                )
        for key in self.grid.labels or {}:
            if key not in self.grid.dataset:
                problems.append(
                    Problem(
                        ("grid", "labels", key),
                        f"not in grid.dataset ({', '.join(self.grid.dataset)})",
                    )
                )
        if "as_side" in self.semi_supervised.model_fields_set:
            problems.append(
                Problem(
                    ("semi_supervised", "as_side"),
                    "a spec gives the AS side as a grid axis: set grid.as_side "
                    f"({', '.join(AS_SIDES)}) instead",
                )
            )
        for key in self.backbones:
            if key not in self.grid.backbone:
                problems.append(
                    Problem(
                        (("backbones", key)),
                        f"not in grid.backbone ({', '.join(self.grid.backbone)})",
                    )
                )
        return problems

    def _match_problems(self, match: Match, loc: Location) -> list[Problem]:
        # A value outside the grid is a typo: it would silently match nothing.
        problems: list[Problem] = []
        for axis in MATCH_AXES:
            if axis == "labels":
                allowed = sorted(
                    {v for values in (self.grid.labels or {}).values() for v in values}
                )
            else:
                allowed = getattr(self.grid, axis)
            show = labels_text if axis == "labels" else str
            for index, value in enumerate(getattr(match, axis) or []):
                if value not in allowed:
                    problems.append(
                        Problem(
                            (*loc, axis, index),
                            f"{show(value)} is not in grid.{axis} "
                            f"({', '.join(map(show, allowed))})",
                        )
                    )
        return problems

    def _effect_problems(self, cells: list[Cell]) -> list[Problem]:
        """Settings that no cell they reach would use: most likely a mistake in the spec."""
        problems: list[Problem] = []
        for name in self.hyperparameters.given():
            if not any(applies(self, name, c) for c in cells):
                problems.append(Problem(("hyperparameters", name), _no_effect(name)))
        for index, override in enumerate(self.overrides):
            reached = [c for c in cells if override.match.matches(c)]
            if not reached:
                problems.append(
                    Problem(("overrides", index, "match"), "matches no cell (after exclude)")
                )
                continue
            for name in override.set.given():
                if not any(applies(self, name, c, override.set.recipe_overrides) for c in reached):
                    problems.append(Problem(("overrides", index, "set", name), _no_effect(name)))
        if "semi_supervised" in self.model_fields_set and not any(
            c.algorithm in STEP_BASED for c in cells
        ):
            problems.append(
                Problem(
                    ("semi_supervised",),
                    "has no effect: no cell trains with a semi-supervised algorithm "
                    f"(grid.algorithm: {', '.join(STEP_BASED)})",
                )
            )
        if "transfer" in self.model_fields_set and not any(c.algorithm in TRANSFER for c in cells):
            problems.append(
                Problem(
                    ("transfer",),
                    "has no effect: no cell trains with a transfer algorithm "
                    f"(grid.algorithm: {', '.join(TRANSFER)})",
                )
            )
        for index, rule in enumerate(self.exclude):
            if not any(rule.matches(c) for c in grid_cells(self)):
                problems.append(Problem(("exclude", index), "matches no cell of the grid"))
        if self.search is not None:
            for name in self.search.parameters:
                if not any(applies(self, name, c) for c in cells):
                    problems.append(Problem(("search", "parameters", name), _no_effect(name)))
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


def _cell_problems(spec: SweepSpec, cells: Iterable[Cell]) -> list[Problem]:
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
    return [Problem(("grid",), line) for line in shown]
