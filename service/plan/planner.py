"""A spec's plan: per cell and in total, device-hours, wall time on N devices and cost.

``plan_spec`` reads each cell's epochs, batch size and data from the trial the engine would
run (``service.spec.cells.train_config``), its trials from the seeds and the search budget,
and its images/s from a calibration table (``service.plan.figures``); the arithmetic is
``service.plan.estimate``. Nothing is left out silently: a cell without a figure has no hours
and the plan says why, an extrapolated or assumed figure says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from service.plan.calibration import CalibrationTable
from service.plan.estimate import (
    AshaRule,
    Packing,
    cell_cost,
    packing,
    usable_devices,
    wall_hours,
)
from service.plan.figures import Need, choose_device, figure_for
from service.plan.flops import method_step_work
from trainers.data.datasets import DATASETS, SYNTHETIC_IMAGES, is_synthetic
from trainers.order import epoch_length
from trainers.vocabulary import STEP_BASED

if TYPE_CHECKING:
    from service.spec.model import SweepSpec
    from trainers.config import DataConfig


class CellPlan(BaseModel):
    """One cell: its trials, the figure they run at, and what they cost."""

    cell: str
    backbone: str
    image_size: int
    epochs: int = Field(description="epochs a trial runs to (at most ASHA's max_t)")
    train_images: int = Field(description="images a trial trains on per epoch, all workers")
    images_per_epoch: int = Field(description="images per epoch of one worker")
    batch_size: int = Field(description="images per step of one worker")
    trials: int
    figure: Literal["measured", "assumed", "extrapolated", "none"]
    extrapolated: bool
    images_per_s: float | None = Field(description="of one worker of one trial")
    notes: list[str]
    trial_hours: float | None = Field(description="wall time of one trial run to its end")
    device_hours: float | None = Field(description="every trial run to its end")
    expected_epochs: float = Field(description="per trial, under ASHA's expectation")
    expected_device_hours: float | None
    cost: float | None
    expected_cost: float | None


class PlanTotals(BaseModel):
    """The sweep's sums; None where some cell has no figure (or no price, no devices)."""

    trials: int
    device_hours: float | None
    expected_device_hours: float | None
    usable_devices: float | None = Field(description="devices busy at once")
    wall_hours: float | None = Field(description="a lower bound on the devices given")
    expected_wall_hours: float | None
    cost: float | None
    expected_cost: float | None


class AshaPlan(BaseModel):
    """The early stopping the expected figures assume."""

    grace_period: int
    max_t: int
    reduction_factor: float
    milestones: list[float]


class Plan(BaseModel):
    """What a spec costs on one device type; ``complete`` is False when a cell has no hours."""

    spec: str
    device: str | None
    device_kind: str | None
    devices: float | None = Field(description="devices the wall time is for (--gpus)")
    price_per_device_hour: float | None
    workers_per_trial: int
    trials_per_device: int
    devices_per_trial: float
    asha: AshaPlan | None
    cells: list[CellPlan]
    totals: PlanTotals
    complete: bool
    assumptions: list[str]
    warnings: list[str]
    tables: list[str] = Field(description="the calibration files read, preferred first")


def train_images(data: DataConfig) -> tuple[int, str | None]:
    """Images a trial trains on per epoch, all workers together, and a note when approximate.

    The published train split (``DatasetInfo.train_images``; synthetic data: its
    ``synthetic_images``), then the share of ``classes``, then ``subset``, then only the
    labelled images of ``label_fraction`` (the loop trains on labelled images alone).
    """
    if is_synthetic(data.name, data.source):
        count = (data.synthetic_images or {}).get("train") or SYNTHETIC_IMAGES["train"]
    else:
        count = DATASETS[data.name].train_images
    note = None
    if data.classes is not None:
        # Assumes classes of equal size (CIFAR's are); the published split is what is known.
        total = data.num_classes if is_synthetic(data.name, data.source) else None
        total = total or DATASETS[data.name].num_classes
        count = max(1, round(count * len(data.classes) / total))
        note = "approximate: data.classes counted as an equal share of the images"
    if data.subset is not None:
        count = min(count, data.subset)
    fraction = data.label_fraction
    if fraction is None:
        return count, note
    if fraction <= 1:
        return max(1, round(count * fraction)), "approximate: label_fraction rounds per class"
    return min(count, int(fraction)), note


def asha_rule(spec: SweepSpec) -> AshaRule | None:
    """The spec's ASHA, or None (every trial runs to its end)."""
    scheduler = spec.search.scheduler if spec.search is not None else None
    if scheduler is None:
        return None
    assert scheduler.max_t is not None  # the spec's validation sets it
    return AshaRule(scheduler.grace_period, scheduler.max_t, scheduler.reduction_factor)


def _assumptions(
    spec: SweepSpec, pack: Packing, device: str | None, asha: AshaRule | None
) -> list[str]:
    resources = spec.resources
    notes = [
        "images/s are of the training step alone (dmsweep calibrate): data loading of photos, "
        "the evaluation after each epoch, checkpoints and start-up are not counted",
        "images per epoch: the published train split of each data set (a copy of other size "
        "trains on its own count)",
        f"a device-hour is one device ({device or 'none chosen'}) held for an hour; a trial "
        f"holds {pack.devices_per_trial:g} (workers_per_trial {resources.workers_per_trial} x "
        f"gpus_per_worker {resources.gpus_per_worker:g})"
        + (
            f"; {pack.trials_per_device} trials share a GPU (gpus_per_worker "
            f"{resources.gpus_per_worker:g})"
            if pack.trials_per_device > 1
            else ""
        ),
        "wall time is a lower bound: the device-hours over the devices busy at once (whole "
        "trials, at most max_concurrent_trials), and no less than the longest trial",
    ]
    if resources.gpus_per_worker == 0:
        notes[2] = (
            f"gpus_per_worker 0: a device-hour is one worker's CPU ({device or 'none chosen'}) "
            f"held for an hour; a trial holds {pack.devices_per_trial:g}"
        )
    if resources.workers_per_trial > 1:
        notes.append(
            f"each of a trial's {resources.workers_per_trial} workers trains its share of the "
            "images at one worker's calibrated images/s; gradient all-reduce is not counted"
        )
    if asha is not None:
        rungs = ", ".join(f"{m:g}" for m in asha.milestones())
        notes.append(
            f"ASHA (grace period {asha.grace_period}, reduction factor "
            f"{asha.reduction_factor:g}, max_t {asha.max_t}; rungs at epochs {rungs}): the bound "
            "runs every trial to max_t; the expected cost assumes a fraction "
            f"1/{asha.reduction_factor:g} of the trials goes on past each rung (synchronous "
            "successive halving). Asynchronous ASHA lets the first trials at a rung go on, so "
            "with few trials per study the cost lies between the two"
        )
    return notes


@dataclass(frozen=True)
class Workload:
    """What one cell's trials train, as the engine would run them."""

    cell: str
    recipe: str
    method: str
    need: Need  # what its images/s figure is looked up for
    epochs: int  # the trial's own (ASHA may end it sooner)
    train_images: int  # per epoch, all workers
    images_per_epoch: int  # per worker
    approximate: str | None  # why ``train_images`` is approximate, if it is


def workloads(spec: SweepSpec) -> list[Workload]:
    """Per cell of ``spec``: its epochs, images and figure lookup, from the trial the engine runs.

    Epochs and batch size are the cell's ``TrainConfig``'s (``train_config``, first seed); a
    worker's images per epoch are the loop's sampler length (``trainers.order.epoch_length``).
    """
    from service.spec.cells import expand, train_config
    from trainers.ssl.algorithms import unlabelled_views

    resources = spec.resources
    pack = packing(resources.workers_per_trial, resources.gpus_per_worker)
    workers = resources.workers_per_trial
    found = []
    for cell in expand(spec):
        config = train_config(spec, cell, spec.grid.seeds[0])
        recipe = config.recipe_settings()
        info = DATASETS[config.data.name]
        images, approximate = train_images(config.data)
        per_epoch = epoch_length(
            images,
            world_size=workers,
            repeated_aug=recipe.repeated_aug,
            num_repeats=recipe.num_repeats,
        )
        if config.algorithm in STEP_BASED:
            # An interval of steps, each forwarding its labelled batch and mu unlabelled images
            # per view (TorchSSL concatenates them into one batch).
            per_step = (config.global_batch_size() // workers) * (
                1 + config.unlabelled_ratio() * unlabelled_views(config)
            )
            per_epoch = config.semi_supervised.eval_every * per_step
            images = per_epoch * workers
            approximate = (
                "semi-supervised: each interval's steps x (labelled batch + mu x views), "
                "counted as images of a supervised step (not counted: MixMatch's guess, "
                "ReMixMatch's and the AS term's extra forwards, the strong views' CPU time)"
            )
        need = Need(
            backbone=cell.backbone,
            image_size=config.data.image_size or info.image_size,
            batch_size=max(1, config.global_batch_size() // workers),
            trials_per_device=pack.trials_per_device,
            amp=recipe.amp,
            num_classes=config.data.num_classes or info.num_classes,
        )
        found.append(
            Workload(
                cell=cell.cell_id,
                recipe=config.recipe,
                method=cell.method,
                need=need,
                epochs=config.epochs_to_train(),
                train_images=images,
                images_per_epoch=per_epoch,
                approximate=approximate,
            )
        )
    return found


def plan_spec(
    spec: SweepSpec,
    table: CalibrationTable,
    *,
    device: str | None = None,
    devices: float | None = None,
    price: float | None = None,
    tables: list[str] | None = None,
) -> Plan:
    """The plan of ``spec`` on ``device`` (a name in ``table``; default: see ``choose_device``).

    ``devices``: how many there are, for the wall time; ``price``: per device-hour.
    """
    resources = spec.resources
    pack = packing(resources.workers_per_trial, resources.gpus_per_worker)
    choice = choose_device(table, device, resources.gpus_per_worker > 0)
    rows = table.on(choice.name) if choice.name is not None and choice.kind else []
    warnings = [choice.problem] if choice.problem else []
    asha = asha_rule(spec)
    samples = (spec.search.num_samples or 1) if spec.search is not None else 1
    trials = len(spec.grid.seeds) * samples
    workers = resources.workers_per_trial
    cells = []
    for work in workloads(spec):
        need, epochs = work.need, work.epochs
        bound = asha.bound_epochs(epochs) if asha is not None else epochs
        expected = asha.expected_epochs(epochs) if asha is not None else float(bound)
        figure = figure_for(rows, choice.kind or "cpu", need)
        notes = [work.approximate] if work.approximate else []
        hours = None
        images_per_s = None
        status = figure.status if figure is not None else "none"
        if figure is not None:
            notes += figure.notes
            # Calibration times a static step; a dynamic policy's step does more passes.
            step_work, why = method_step_work(work.method)
            images_per_s = figure.images_per_s / step_work
            if why is not None:
                status = "assumed" if status == "measured" else status
                notes.append(
                    f"{work.method}: {why}, counted as {step_work:.3g} static steps (assumed "
                    "from the passes of the backbone, not measured)"
                )
            hours = cell_cost(
                trials=trials,
                images_per_epoch=work.images_per_epoch,
                images_per_s=images_per_s,
                bound_epochs=bound,
                expected_epochs=expected,
                devices_per_trial=pack.devices_per_trial,
            )
        elif choice.name is not None:
            notes.append(f"no calibration for device {choice.name!r}")
        cells.append(
            CellPlan(
                cell=work.cell,
                backbone=need.backbone,
                image_size=need.image_size,
                epochs=bound,
                train_images=work.train_images,
                images_per_epoch=work.images_per_epoch,
                batch_size=need.batch_size,
                trials=trials,
                figure=status,
                extrapolated=figure is not None and figure.status == "extrapolated",
                images_per_s=images_per_s,
                notes=notes,
                trial_hours=hours.trial_hours if hours else None,
                device_hours=hours.device_hours if hours else None,
                expected_epochs=expected,
                expected_device_hours=hours.expected_device_hours if hours else None,
                cost=hours.device_hours * price if hours and price is not None else None,
                expected_cost=(
                    hours.expected_device_hours * price if hours and price is not None else None
                ),
            )
        )
    missing = [c.cell for c in cells if c.device_hours is None]
    if missing and choice.name is not None and not warnings:
        warnings.append(f"no calibration for device {choice.name!r}: no hours for any cell")
    extrapolated = [c.cell for c in cells if c.extrapolated]
    if extrapolated:
        warnings.append(
            f"{len(extrapolated)} of {len(cells)} cells are extrapolated (not calibrated on "
            "this device): see their notes"
        )
    total_trials = trials * len(cells)
    return Plan(
        spec=spec.name,
        device=choice.name,
        device_kind=choice.kind,
        devices=devices,
        price_per_device_hour=price,
        workers_per_trial=workers,
        trials_per_device=pack.trials_per_device,
        devices_per_trial=pack.devices_per_trial,
        asha=(
            AshaPlan(
                grace_period=asha.grace_period,
                max_t=asha.max_t,
                reduction_factor=asha.reduction_factor,
                milestones=asha.milestones(),
            )
            if asha is not None
            else None
        ),
        cells=cells,
        totals=_totals(cells, total_trials, pack, devices, price, resources.max_concurrent_trials),
        complete=not missing,
        assumptions=([choice.note] if choice.note else [])
        + _assumptions(spec, pack, choice.name, asha),
        warnings=warnings,
        tables=tables or [],
    )


def _totals(
    cells: list[CellPlan],
    trials: int,
    pack: Packing,
    devices: float | None,
    price: float | None,
    max_concurrent_trials: int | None,
) -> PlanTotals:
    if any(c.device_hours is None for c in cells) or not cells:
        return PlanTotals(
            trials=trials,
            device_hours=None,
            expected_device_hours=None,
            usable_devices=None,
            wall_hours=None,
            expected_wall_hours=None,
            cost=None,
            expected_cost=None,
        )
    bound = sum(c.device_hours or 0.0 for c in cells)
    expected = sum(c.expected_device_hours or 0.0 for c in cells)
    longest = max(c.trial_hours or 0.0 for c in cells)
    usable = (
        usable_devices(devices, pack.devices_per_trial, trials, max_concurrent_trials)
        if devices is not None
        else None
    )
    return PlanTotals(
        trials=trials,
        device_hours=bound,
        expected_device_hours=expected,
        usable_devices=usable,
        wall_hours=wall_hours(bound, usable, longest) if usable is not None else None,
        expected_wall_hours=wall_hours(expected, usable, longest) if usable is not None else None,
        cost=bound * price if price is not None else None,
        expected_cost=expected * price if price is not None else None,
    )
