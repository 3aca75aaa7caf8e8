"""Which device a plan is for, and the images/s figure of each cell on it.

A figure is *measured* when the table has the cell's backbone, image size, batch size per
worker, trials per device and mixed precision on the device; *assumed* when a row of the
backbone and size on the device is used for another batch size, packing or precision (each
said in a note); *extrapolated* when the device has no row of the backbone at that size: the
figure of another backbone on the same device, scaled by the ratio of forward FLOPs
(``service.plan.flops``). A device without any row gives no figure at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from service.plan.calibration import CalibrationRow, CalibrationTable
from service.plan.flops import work_ratio

FigureStatus = Literal["measured", "assumed", "extrapolated"]
KIND_WORDS = {"cpu": "CPU", "cuda": "GPU"}


@dataclass(frozen=True)
class DeviceChoice:
    """The device a plan is for; ``problem`` says why there is none (or no figures for it)."""

    name: str | None
    kind: str | None
    note: str | None = None
    problem: str | None = None


def _listed(devices: dict[str, str]) -> str:
    return ", ".join(f"{name!r} ({KIND_WORDS[kind]})" for name, kind in devices.items())


def choose_device(table: CalibrationTable, requested: str | None, wants_gpu: bool) -> DeviceChoice:
    """The device a plan is for.

    The one ``requested`` names (its whole name or a unique part, any case), else the table's
    only device of the spec's kind (a GPU when ``wants_gpu``), else the table's only device.
    """
    devices = table.devices()
    if requested is not None:
        wanted = requested.casefold()
        exact = [name for name in devices if name.casefold() == wanted]
        found = exact or [name for name in devices if wanted in name.casefold()]
        if len(found) == 1:
            return DeviceChoice(found[0], devices[found[0]])
        if found:
            return DeviceChoice(
                None, None, problem=f"{requested!r} names several devices: {', '.join(found)}"
            )
        have = f"; the table has {_listed(devices)}" if devices else "; the table is empty"
        return DeviceChoice(
            requested, None, problem=f"no calibration for device {requested!r}{have}"
        )
    kind = "cuda" if wants_gpu else "cpu"
    same = [name for name, k in devices.items() if k == kind]
    if len(same) == 1:
        return DeviceChoice(same[0], kind, note=f"the only {KIND_WORDS[kind]} in the table")
    if not devices:
        return DeviceChoice(
            None,
            None,
            problem="the calibration table is empty: run `dmsweep calibrate` on the device the "
            "sweep will run on (or give --table)",
        )
    if not same and len(devices) == 1:
        name, other = next(iter(devices.items()))
        return DeviceChoice(
            name,
            other,
            note=f"the spec asks for {KIND_WORDS[kind]}s, but the table has only {name!r} "
            f"({KIND_WORDS[other]}): the plan is for it",
        )
    return DeviceChoice(
        None,
        None,
        problem=f"the table has {_listed(devices)}: name the device with --gpu-type",
    )


@dataclass(frozen=True)
class Need:
    """What a cell's figure is looked up for."""

    backbone: str
    image_size: int
    batch_size: int  # per worker
    trials_per_device: int
    amp: bool  # the recipe's mixed precision; a CPU trains without
    num_classes: int


@dataclass(frozen=True)
class Figure:
    """Images/s of one worker of one trial, where it comes from, and what was assumed."""

    images_per_s: float
    status: FigureStatus
    notes: tuple[str, ...]
    row: CalibrationRow


def figure_for(rows: list[CalibrationRow], kind: str, need: Need) -> Figure | None:
    """The figure of ``need`` from ``rows`` (one device's, of ``kind``); None without rows.

    The rows of the backbone at the size are preferred (none: any row, extrapolated); among
    them the same packing, else one trial per device, the same precision, the nearest batch
    size, the earlier row.
    """
    if not rows:
        return None
    amp = need.amp and kind == "cuda"
    own = [r for r in rows if (r.backbone, r.image_size) == (need.backbone, need.image_size)]

    def preference(item: tuple[int, CalibrationRow]) -> tuple[bool, bool, bool, bool, float, int]:
        index, row = item
        return (
            row.image_size != need.image_size,
            row.trials_per_device != need.trials_per_device,
            row.trials_per_device != 1,
            row.amp != amp,
            abs(math.log(row.batch_size / need.batch_size)),
            index,
        )

    row = min(enumerate(own or rows), key=preference)[1]
    images_per_s, notes = row.images_per_s, []
    status: FigureStatus = "measured"
    if not own:
        ratio, counted = work_ratio(
            (row.backbone, row.image_size), (need.backbone, need.image_size), need.num_classes
        )
        images_per_s /= ratio
        status = "extrapolated"
        notes.append(
            f"no calibration of {need.backbone} at {need.image_size} px on this device: "
            f"extrapolated from {row.backbone} at {row.image_size} px by forward work "
            f"({counted})"
        )
    if row.trials_per_device != need.trials_per_device:
        images_per_s *= row.trials_per_device / need.trials_per_device
        notes.append(
            f"{need.trials_per_device} trials per device not calibrated: the figure of "
            f"{row.trials_per_device} per device x {row.trials_per_device}/"
            f"{need.trials_per_device} (assumed: packing leaves the device's total images/s "
            "as it is)"
        )
    if row.amp != amp:
        notes.append(
            f"calibrated {'with' if row.amp else 'without'} mixed precision; the recipe trains "
            f"{'with' if amp else 'without'} it"
        )
    if row.batch_size != need.batch_size:
        notes.append(f"calibrated at batch {row.batch_size} per worker, not {need.batch_size}")
    if status == "measured" and notes:
        status = "assumed"
    return Figure(images_per_s, status, tuple(notes), row)
