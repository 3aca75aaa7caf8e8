"""A spec's cells and trials: the grid's product, exclusions and each cell's resolved settings.

A *cell* is one (dataset, backbone, method, loss) combination, e.g. one entry of Table 1; a
*trial* is a cell with one seed (the paper reports the mean of three trials, Sec. 4) or, when
the spec has a ``search`` section, one sampled setting (the eta / xi / t grids of Sec. 4.5).

Hyperparameters of a cell, per key, from the first that sets it: the matching ``overrides``
(later ones win), the spec's top-level ``hyperparameters``, then the paper's defaults
(``service.spec.defaults``, appendix A.3).

With ``controls: true`` a spec also runs a *control cell* per DM cell (``control_cells``): the
base loss at the DM cell's alpha. The paper compares MCE at its tuned alpha with DM at alpha
0.2 (A.3), so part of a DM gain can be the alpha; the control tells the two apart.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from service.spec import defaults
from trainers.config import MixingSettings, TrainConfig, TransferSettings
from trainers.data.datasets import resolve_weights
from trainers.recipes import get_recipe
from trainers.vocabulary import (
    DEFAULT_AS_SIDE,
    GAIN_PAIRS,
    LOSS_HYPERPARAMETER_NAMES,
    LOSS_HYPERPARAMETERS,
    takes_alpha,
)

if TYPE_CHECKING:
    from service.spec.model import SweepSpec
    from service.spec.search import Range

AXES = ("dataset", "backbone", "method", "loss")
"""The grid's axes every spec has; ``algorithm`` and ``labels`` (semi-supervised, Table 7) are
the other two, which keep the supervised cells' ids as they were."""
SUPERVISED = "supervised"
CONTROL = "control"
"""The last part of a control cell's id: ``<dataset>/<backbone>/<method>/<base loss>/control``."""
CONTROL_LOSS = {dm: base for base, dm in GAIN_PAIRS}
"""Each DM loss's base loss (MCE for DM(CE), MBCE for DM(BCE)): what its control cell runs."""


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
    mixing: MixingSettings = field(default_factory=MixingSettings, compare=False)
    # The training settings this cell takes from the spec without a cited source ("epochs",
    # "recipe_overrides"): where any, its number does not compare with the paper's.
    departures: tuple[str, ...] = field(default=(), compare=False)
    # A control cell (``control_cells``): the base loss at a DM cell's alpha, not the grid's cell.
    control: bool = False
    # The hyperparameters the spec sets for this cell; the others are the paper's defaults.
    given: frozenset[str] = field(default=frozenset(), compare=False)
    # Supervised, or a semi-supervised algorithm of Table 7.
    algorithm: str = SUPERVISED
    # The labels kept (a count > 1 or a fraction <= 1; ``grid.labels``), or None: the data's.
    labels: float | None = None
    # The asymmetric strategy's side of lambda (``grid.as_side``, Table 9's ablation).
    as_side: str = DEFAULT_AS_SIDE
    # The transfer algorithms' settings (the spec's ``transfer``, then the overrides').
    transfer: TransferSettings = field(default_factory=TransferSettings, compare=False)

    @property
    def cell_id(self) -> str:
        """``dataset/backbone/method/loss``, e.g. ``cifar100/resnet18_cifar/mixup/dm_ce``.

        A control cell's ends in ``/control``: ``cifar100/resnet18_cifar/mixup/mce/control``.
        The labels kept follow the data set after ``@`` and a semi-supervised algorithm comes
        before the method: ``cifar10@4000/wrn28_2/fixmatch/mixup/dm_ce``; an AS side other
        than the default follows the loss: ``cub200@0.15/resnet18/self_tuning/mixup/mce/as_none``.
        """
        dataset = self.dataset if self.labels is None else f"{self.dataset}@{self.labels_text}"
        algorithm = () if self.algorithm == SUPERVISED else (self.algorithm,)
        side = () if self.as_side == DEFAULT_AS_SIDE else (f"as_{self.as_side}",)
        cell_id = "/".join((dataset, self.backbone, *algorithm, self.method, self.loss, *side))
        return f"{cell_id}/{CONTROL}" if self.control else cell_id

    @property
    def labels_text(self) -> str:
        """The labels as the cell id shows them: ``4000``, ``0.15``; empty without."""
        return "" if self.labels is None else labels_text(self.labels)

    @property
    def slug(self) -> str:
        """The cell id usable as a file name: ``/`` replaced by ``__``."""
        return self.cell_id.replace("/", "__")


def labels_text(labels: float) -> str:
    """A label count or fraction as text: ``4000``, ``0.15``."""
    return str(int(labels)) if float(labels).is_integer() else f"{labels:g}"


def grid_cells(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid's product, in grid order, before exclusions and settings.

    The order: data set, its labels (``grid.labels``), backbone, algorithm, method, loss, AS
    side.
    """
    g = spec.grid
    return [
        Cell(dataset, backbone, method, loss, algorithm=algorithm, labels=labels, as_side=side)
        for dataset in g.dataset
        for labels in g.labels_of(dataset)
        for backbone, algorithm, method, loss, side in itertools.product(
            g.backbone, g.algorithm, g.method, g.loss, g.as_side
        )
    ]


def resolve(spec: SweepSpec, bare: Cell) -> Cell:
    """``bare`` with its hyperparameters, recipe overrides and epochs resolved (precedence)."""
    matching = [o.set for o in spec.overrides if o.match.matches(bare)]
    recipe_overrides = dict(spec.recipe_overrides)
    epochs = spec.epochs
    mixing = spec.mixing.model_dump()
    transfer = spec.transfer.model_dump()
    departures = {"epochs": epochs is not None, "recipe_overrides": bool(recipe_overrides)}
    for settings in matching:
        recipe_overrides.update(settings.recipe_overrides)
        epochs = settings.epochs if settings.epochs is not None else epochs
        if settings.mixing is not None:
            mixing.update(settings.mixing.model_dump(exclude_unset=True))
        if settings.transfer is not None:
            transfer.update(settings.transfer.model_dump(exclude_unset=True))
        # A later setting replaces an earlier one, so the last to set a key says whether it is
        # the paper's; recipe overrides merge, so one without a source taints them all.
        if settings.epochs is not None:
            departures["epochs"] = settings.source is None
        if settings.recipe_overrides and settings.source is None:
            departures["recipe_overrides"] = True
    if bare.algorithm == SUPERVISED:
        values = defaults.resolve_hyperparameters(
            bare.dataset, bare.backbone, bare.method, bare.loss
        )
    else:
        values = defaults.semi_supervised_hyperparameters(bare.algorithm, bare.method, bare.loss)
    given = set(spec.hyperparameters.given())
    values.update(spec.hyperparameters.given())
    for settings in matching:
        values.update(settings.given())
        given |= set(settings.given())
    if bare.algorithm != SUPERVISED:
        # A semi-supervised run's epochs are its evaluation intervals; epochs set in the spec
        # go through, for TrainConfig to refuse them naming the steps to set instead.
        departures["semi_supervised"] = not spec.semi_supervised.is_papers(bare.algorithm)
        if epochs is None:
            epochs = spec.semi_supervised.intervals()
            departures["epochs"] = False
    cell = Cell(bare.dataset, bare.backbone, bare.method, bare.loss, {}, recipe_overrides, epochs)
    kept = {k: v for k, v in values.items() if applies(spec, k, cell)}
    return Cell(
        bare.dataset,
        bare.backbone,
        bare.method,
        bare.loss,
        kept,
        recipe_overrides,
        epochs,
        MixingSettings.model_validate(mixing),
        tuple(name for name, departs in departures.items() if departs),
        given=frozenset(given & set(kept)),
        algorithm=bare.algorithm,
        labels=bare.labels,
        as_side=bare.as_side,
        transfer=TransferSettings.model_validate(transfer),
    )


def _interpolation_settings(cell: Cell) -> dict[str, float]:
    """DM(BCE)'s xi / t of the Mixup batches of ``mixup_cutmix`` (A.3's interpolation values).

    A.3 gives interpolation- and cutting-based policies different xi and t; ``mixup_cutmix``
    switches between the two families per batch, so its loss picks per batch as well. The cell's
    own xi / t apply to its CutMix batches. The split is A.3's defaults only: a spec that sets
    xi or t for the cell (or searches them) sets them for every batch.
    """
    if cell.method != "mixup_cutmix" or cell.loss != "dm_bce" or cell.given & {"xi", "t"}:
        return {}
    return {f"interpolation_{k}": v for k, v in defaults.BCE_INTERPOLATION.items()}


def is_control_id(cell_id: str) -> bool:
    """Whether ``cell_id`` is a control cell's (``Cell.cell_id``)."""
    return cell_id.endswith("/" + CONTROL)


def control_cells(spec: SweepSpec, cells: list[Cell]) -> list[Cell]:
    """With ``controls: true``, per DM cell of ``cells``: its base loss at its alpha.

    A control keeps the DM cell's other settings (recipe overrides, epochs, mixing), so that it
    differs from the DM cell in the loss alone. There is none for a DM cell that takes no alpha
    (vanilla, ResizeMix, mixup_cutmix with the recipe's alphas), nor where the grid's baseline
    cell already runs at the DM cell's alpha: that cell is the control (the report uses it so).
    """
    if not spec.controls:
        return []
    alphas = {cell.cell_id: cell.hyperparameters.get("alpha") for cell in cells}
    controls = []
    for cell in cells:
        base, alpha = CONTROL_LOSS.get(cell.loss), cell.hyperparameters.get("alpha")
        if base is None or alpha is None:
            continue
        baseline = replace(cell, loss=base).cell_id
        if baseline in alphas and alphas[baseline] == alpha:
            continue
        controls.append(
            Cell(
                cell.dataset,
                cell.backbone,
                cell.method,
                base,
                {"alpha": alpha},
                dict(cell.recipe_overrides),
                cell.epochs,
                cell.mixing,
                cell.departures,
                control=True,
                algorithm=cell.algorithm,
                labels=cell.labels,
                as_side=cell.as_side,
                transfer=cell.transfer,
            )
        )
    return controls


def expand(spec: SweepSpec) -> list[Cell]:
    """The cells in grid order (dataset, backbone, method, loss), exclusions applied.

    With ``controls: true`` the control cells follow (``control_cells``).
    """
    cells = [
        resolve(spec, cell)
        for cell in grid_cells(spec)
        if not any(rule.matches(cell) for rule in spec.exclude)
    ]
    return cells + control_cells(spec, cells)


def train_config(spec: SweepSpec, cell: Cell, seed: int) -> TrainConfig:
    """The ``TrainConfig`` of ``cell`` with ``seed`` (raises pydantic's ValidationError)."""
    hp = cell.hyperparameters
    data = spec.data.get(cell.dataset)
    backbone = spec.backbones.get(cell.backbone)
    data_settings = data.model_dump() if data else {}
    backbone_settings = backbone.model_dump() if backbone else {}
    if backbone_settings.get("weights"):
        # Relative: under $DMSWEEP_DATA_ROOT, as the service puts it under its first data root.
        backbone_settings["weights"] = str(resolve_weights(backbone_settings["weights"]))
    if cell.labels is not None:  # grid.labels takes over from data.<name>.label_fraction
        data_settings["label_fraction"] = cell.labels
    return TrainConfig.model_validate(
        {
            "data": {"name": cell.dataset, **data_settings},
            "algorithm": cell.algorithm,
            "semi_supervised": {**spec.semi_supervised.model_dump(), "as_side": cell.as_side},
            "transfer": cell.transfer.model_dump(),
            "backbone": {"name": cell.backbone, **backbone_settings},
            "mixing": {"method": cell.method, "alpha": hp.get("alpha"), **cell.mixing.model_dump()},
            "loss": {
                "name": cell.loss,
                **{k: hp[k] for k in LOSS_HYPERPARAMETER_NAMES if k in hp},
                **_interpolation_settings(cell),
            },
            "recipe": spec.recipe,
            "recipe_overrides": cell.recipe_overrides,
            "epochs": cell.epochs,
            "batch_size": spec.batch_size,
            "seed": seed,
            "checkpoint_every": spec.checkpoint_every,
            "eval": spec.eval.model_dump(),
        }
    )


def comparable(spec: SweepSpec, cell: Cell) -> bool:
    """Whether the paper's number for the cell compares with ours: the paper's settings as they are.

    Epochs and recipe overrides count as the paper's when the override that sets them cites its
    source (``CellSettings.source``). Drawing lambda per sample is not how the paper's
    configurations drew it (one per batch), nor is SaliencyMix's spectral-residual detector
    SaliencyMix's own, nor a SAMix balance other than its config's.
    """
    data = spec.data.get(cell.dataset)
    return (
        cell.dataset != "synthetic"
        and cell.mixing.lambda_mode == "batch"
        and (cell.method != "saliencymix" or cell.mixing.saliency_detector == "fine_grained")
        and (cell.method != "samix" or cell.mixing.samix_balance is None)
        and not cell.departures
        and spec.batch_size is None
        and (
            data is None
            or (data.subset is None and data.label_fraction is None and data.classes is None)
        )
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
        "controls": sum(cell.control for cell in cells),
        "trials": len(cells) * len(spec.grid.seeds),
        "seeds": list(spec.grid.seeds),
        "datasets": sorted({c.dataset for c in cells}, key=spec.grid.dataset.index),
        "backbones": sorted({c.backbone for c in cells}, key=spec.grid.backbone.index),
        "methods": sorted({c.method for c in cells}, key=spec.grid.method.index),
        "losses": sorted({c.loss for c in cells}, key=spec.grid.loss.index),
        "algorithms": sorted({c.algorithm for c in cells}, key=spec.grid.algorithm.index),
        "as_sides": sorted({c.as_side for c in cells}, key=spec.grid.as_side.index),
        "recipe": spec.recipe,
        "search": spec.search is not None,
    }
    if spec.search is not None:
        out["sampler"] = spec.search.sampler
        out["samples_per_trial"] = spec.search.num_samples
    return out
