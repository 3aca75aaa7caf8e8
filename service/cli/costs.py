"""``dmsweep calibrate`` and ``dmsweep plan``: what a grid will cost, before it runs.

``calibrate`` times the training step on this machine (``trainers.throughput``) and keeps the
figures in a calibration table; ``plan`` turns a spec and such a table into device-hours, wall
time and cost (``service.plan``). The training code, the spec model and torch are imported by
the commands, not by this module.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from service.cli.options import console, fail
from service.plan.summary import hours, money, summary_lines

if TYPE_CHECKING:
    from service.plan.calibration import CalibrationRow
    from service.plan.planner import Plan

TableOption = Annotated[
    Path | None,
    typer.Option(
        "--table",
        help="The calibration table (YAML); default $DMSWEEP_CALIBRATION_TABLE, else "
        "~/.dmsweep/calibration.yaml.",
    ),
]


def _measure_rows(
    settings: list[tuple[str, int, int, str]],
    trials_per_device: int,
    steps: int,
    warmup: int,
    device: str,
) -> list[CalibrationRow]:
    """One row per (backbone, image size, batch size, recipe), measured here and now."""
    import torch

    from service.plan.calibration import CalibrationRow
    from trainers.throughput import device_name, measure_together

    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    target = torch.device("cuda" if gpu else "cpu")
    rows = []
    for backbone, image_size, batch_size, recipe in settings:
        console.print(
            f"measuring {backbone} at {image_size} px, batch {batch_size}, recipe {recipe}, "
            f"{trials_per_device} trial(s) on {device_name(target)} ..."
        )
        measured = measure_together(
            trials_per_device,
            backbone=backbone,
            image_size=image_size,
            batch_size=batch_size,
            steps=steps,
            warmup=warmup,
            recipe=recipe,
            device=target.type,
        )
        rows.append(
            CalibrationRow(
                backbone=backbone,
                image_size=image_size,
                batch_size=batch_size,
                # packed CPU trials each see a share of the threads: the device is the whole CPU
                device=device_name(target),
                kind="cuda" if target.type == "cuda" else "cpu",
                trials_per_device=trials_per_device,
                amp=measured[0].amp,
                images_per_s=sum(m.images_per_s for m in measured) / len(measured),
                measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                recipe=recipe,
                steps=steps,
            )
        )
    return rows


def _spec_settings(spec_file: Path) -> list[tuple[str, int, int, str]]:
    """The (backbone, image size, batch per worker, recipe) a spec's cells train with."""
    from service.plan.planner import workloads
    from service.spec.reading import load_spec

    try:
        spec = load_spec(spec_file)
    except ValueError as error:
        raise fail(str(error)) from None
    found = []
    for work in workloads(spec):
        setting = (work.need.backbone, work.need.image_size, work.need.batch_size, work.recipe)
        if setting not in found:
            found.append(setting)
    return found


def calibrate(
    backbone: Annotated[
        list[str] | None,
        typer.Option(help="A backbone to measure (repeat for several); default resnet18_cifar."),
    ] = None,
    image_size: Annotated[int, typer.Option(min=8, help="Training image size, px.")] = 32,
    batch_size: Annotated[int, typer.Option(min=2, help="Images per step of one worker.")] = 100,
    recipe: Annotated[
        str, typer.Option(help="Recipe of the step: optimiser, EMA, mixed precision.")
    ] = "cifar",
    spec: Annotated[
        Path | None,
        typer.Option(
            help="Measure every backbone, image size, batch and recipe this spec's cells use "
            "(instead of --backbone, --image-size, --batch-size, --recipe)."
        ),
    ] = None,
    trials_per_device: Annotated[
        int,
        typer.Option(
            min=1,
            help="Trials sharing the device at once, each in its own process "
            "(1 / gpus_per_worker).",
        ),
    ] = 1,
    steps: Annotated[int, typer.Option(min=1, help="Steps timed, after the warm-up.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Steps run before timing.")] = 3,
    device: Annotated[
        str, typer.Option(help="auto (a GPU when there is one), cpu or cuda.")
    ] = "auto",
    table: TableOption = None,
) -> None:
    """Measure images/s of the training step on this machine and keep them for `dmsweep plan`.

    Short real runs of the training loop's step (no Ray, no MLflow) on synthetic images of the
    size asked, after warm-up steps. A row of the same backbone, size, batch, device, packing
    and precision is replaced.
    """
    from service.plan.calibration import CalibrationTable, read_table, user_table_path, write_table

    if device not in ("auto", "cpu", "cuda"):
        raise fail(f"--device must be auto, cpu or cuda; got {device!r}")
    path = table or user_table_path()
    if spec is not None:
        settings = _spec_settings(spec)
    else:
        names = backbone or ["resnet18_cifar"]
        settings = [(name, image_size, batch_size, recipe) for name in names]
    try:
        current = read_table(path) if path.is_file() else CalibrationTable()
        rows = _measure_rows(settings, trials_per_device, steps, warmup, device)
    except (ValueError, RuntimeError) as error:
        raise fail(str(error)) from None
    for row in rows:
        current = current.with_row(row)
    write_table(current, path)
    shown = Table(title="images/s of one trial's training step")
    for column in ("backbone", "px", "batch", "device", "trials/device", "amp", "images/s"):
        shown.add_column(column)
    for row in rows:
        shown.add_row(
            row.backbone,
            str(row.image_size),
            str(row.batch_size),
            row.device,
            str(row.trials_per_device),
            "yes" if row.amp else "no",
            f"{row.images_per_s:,.1f}",
        )
    console.print(shown)
    console.print(f"written to {path}", highlight=False)


def _grouped_notes(plan: Plan) -> list[str]:
    """Each distinct cell note once, with the cells it applies to."""
    cells: dict[str, list[str]] = defaultdict(list)
    for cell in plan.cells:
        for note in cell.notes:
            cells[note].append(cell.cell)
    lines = []
    for note, names in cells.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{note} ({len(names)} cell(s): {shown})")
    return lines


def print_plan(plan: Plan) -> None:
    """The plan as a table per cell, its totals, warnings, notes and assumptions."""
    asha = plan.asha is not None
    priced = plan.price_per_device_hour is not None
    title = f"{plan.spec} on {plan.device or 'no device'}"
    if plan.devices is not None:
        title += f", {plan.devices:g} device(s)"
    shown = Table(title=title)
    columns = ["cell", "trials", "epochs", "img/s", "figure", "trial", "device-h"]
    columns += ["expected device-h"] if asha else []
    columns += ["cost"] + (["expected cost"] if asha else []) if priced else []
    for column in columns:
        if column == "cell":  # whole ids, folded onto a second line where they must
            shown.add_column(column, overflow="fold")
        else:
            shown.add_column(column, justify="left" if column == "figure" else "right")
    for cell in plan.cells:
        values = [
            cell.cell,
            str(cell.trials),
            f"{cell.epochs}" + (f" ({cell.expected_epochs:.3g})" if asha else ""),
            "-" if cell.images_per_s is None else f"{cell.images_per_s:,.0f}",
            cell.figure,
            hours(cell.trial_hours),
            "-" if cell.device_hours is None else f"{cell.device_hours:,.2f}",
        ]
        if asha:
            expected = cell.expected_device_hours
            values.append("-" if expected is None else f"{expected:,.2f}")
        if priced:
            values.append(money(cell.cost))
            if asha:
                values.append(money(cell.expected_cost))
        shown.add_row(*values)
    console.print(shown)
    if asha:
        console.print("epochs: each trial's end (in brackets: its expected epochs under ASHA)")
    for line in summary_lines(plan.model_dump()):
        style = "yellow" if line.startswith("warning") else "bold"
        console.print(f"[{style}]{escape(line)}[/]", highlight=False)
    for line in _grouped_notes(plan):
        console.print(f"note: {escape(line)}", highlight=False)
    for line in plan.assumptions:
        console.print(f"[dim]assumed: {escape(line)}[/]", highlight=False)


def plan(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec (YAML).")],
    gpus: Annotated[
        float | None,
        typer.Option(
            min=0, help="Devices the sweep runs on, for its wall time (GPUs, or CPU workers)."
        ),
    ] = None,
    gpu_type: Annotated[
        str | None,
        typer.Option(
            help="The device to plan for, as the table names it (or a unique part of its "
            "name); default the table's only GPU."
        ),
    ] = None,
    price_per_gpu_hour: Annotated[
        float | None, typer.Option(min=0, help="Price of one device-hour, for the cost.")
    ] = None,
    table: TableOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Device-hours, wall time and cost of a spec's grid, per cell and in total, before it runs.

    Combines the spec's epochs, data sizes, seeds and search budget with the images/s of a
    calibration table (`dmsweep calibrate`). Figures not measured for a cell are extrapolated or
    assumed, and flagged. Exit status: 0 a plan of every cell, 1 some cell has no hours (no
    calibration for the device), 2 the spec or the table is invalid.
    """
    from service.plan.calibration import planning_table
    from service.plan.planner import plan_spec
    from service.spec.reading import load_spec

    try:
        spec = load_spec(spec_file)
        rows, sources = planning_table(table)
    except ValueError as error:
        raise fail(str(error)) from None
    made = plan_spec(
        spec, rows, device=gpu_type, devices=gpus, price=price_per_gpu_hour, tables=sources
    )
    if as_json:
        print(json.dumps(made.model_dump(mode="json"), indent=2))
    else:
        print_plan(made)
    if not made.complete:
        raise typer.Exit(1)
