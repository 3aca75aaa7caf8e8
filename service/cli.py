"""The ``dmsweep`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.demo import load_grid, run_grid
from service.spec import check_data as data_problems
from service.spec import expand, json_schema, load_spec, summary
from service.train import epoch_progress, train_in_process
from trainers.data import LAYOUTS, prepare

app = typer.Typer(help="Sweeps of Decoupled Mixup (DM) on Ray.", no_args_is_help=True)
data_app = typer.Typer(help="Data sets: convert published layouts.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

DEMO_GRID = Path("search_spaces/demo/grid.yaml")


@app.callback()
def main() -> None:
    """Run, tune and report the Decoupled Mixup benchmark grid."""


@app.command()
def demo(
    grid_file: Annotated[Path, typer.Argument(help="Grid file (YAML).")] = DEMO_GRID,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the grid's epochs.")] = None,
) -> None:
    """Train a small grid in this process on synthetic data and print MCE against DM."""
    try:
        grid = load_grid(grid_file)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    if epochs is not None:
        grid = grid.model_copy(update={"epochs": epochs})
    cells = grid.cells()
    console.print(
        f"[bold]{grid.name}[/]: {len(cells)} cells ({len(grid.policies)} policies x "
        f"{len(grid.losses)} losses), {grid.backbone}, {grid.epochs} epochs on "
        f"{grid.data.train_images} synthetic {grid.data.image_size}px images of "
        f"{grid.data.num_classes} classes"
    )
    with epoch_progress(console, "{task.description:<24}") as progress:
        task = progress.add_task("", total=len(cells) * grid.epochs, last="")
        results = run_grid(
            grid,
            on_cell_start=lambda c: progress.update(
                task, description=f"{c.mixing.method} / {c.loss.name}"
            ),
            on_epoch=lambda m: progress.update(
                task, advance=1, last=f"epoch {m['epoch']}: top-1 {m['val_top1']:.1f}%"
            ),
        )
    console.print(_comparison_table(grid.losses, results))


@app.command()
def train(
    trial_file: Annotated[Path, typer.Argument(help="One trial (TrainConfig) as YAML.")],
    out: Annotated[
        Path | None, typer.Option(help="Keep checkpoints and per-epoch metrics in this folder.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="A checkpoint folder to continue from.")
    ] = None,
) -> None:
    """Run one trial in this process, without Ray, and print its metrics."""
    try:
        metrics = train_in_process(trial_file, out=out, resume=resume, console=console)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    table = Table(title="final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def validate(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary only.")] = False,
    check_data: Annotated[
        bool, typer.Option(help="Also check that every data set's root folder exists.")
    ] = False,
) -> None:
    """Check a sweep spec and print the cells and trials it expands into (exit 2 if invalid)."""
    try:
        spec = load_spec(spec_file)
        cells = expand(spec)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    problems = data_problems(spec) if check_data else []
    info = summary(spec)
    if as_json:
        print(json.dumps({**info, "data_problems": problems}))
    else:
        table = Table(title=f"{info['name']}: {info['cells']} cells, {info['trials']} trials")
        for column in ("cell", "hyperparameters", "seeds"):
            table.add_column(column)
        for cell in cells:
            values = ", ".join(f"{k}={v:g}" for k, v in sorted(cell.hyperparameters.items()))
            table.add_row(cell.cell_id, values, ", ".join(map(str, spec.grid.seeds)))
        console.print(table)
        for problem in problems:
            console.print(f"[red]data:[/] {problem}")
    if problems:
        raise typer.Exit(2)


@app.command()
def schema() -> None:
    """Print the JSON schema of a sweep spec."""
    print(json.dumps(json_schema(), indent=2))


@data_app.command("prepare")
def data_prepare(
    layout: Annotated[str, typer.Argument(help=f"One of: {', '.join(LAYOUTS)}.")],
    source: Annotated[Path, typer.Argument(help="The folder holding the published layout.")],
    out: Annotated[Path, typer.Option(help="Where to write the converted data set.")],
    fmt: Annotated[
        str, typer.Option("--format", help="imagefolder, or parquet (shards written with pyarrow).")
    ] = "imagefolder",
    image_size: Annotated[
        int | None, typer.Option(min=8, help="Store images at this size (default: the layout's).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace splits already in --out.")] = False,
) -> None:
    """Convert a published data set layout into ImageFolder or Parquet shards."""
    try:
        written = prepare(layout, source, out, fmt, image_size=image_size, overwrite=overwrite)
    except (ValueError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    console.print(f"wrote {written}")


def _comparison_table(losses, results) -> Table:
    by_cell = {(cell.mixing.method, cell.loss.name): result for cell, result in results}
    loss_names = list(losses)
    table = Table(
        title="Top-1 accuracy (%) on the test split, last epoch",
        caption="one seed per cell: the paper reports the mean of three",
    )
    table.add_column("policy")
    for loss in loss_names:
        table.add_column(loss, justify="right")
    if "mce" in loss_names and len(loss_names) > 1:
        for loss in loss_names:
            if loss != "mce":
                table.add_column(f"{loss} - mce", justify="right")
    table.add_column("train s / cell", justify="right")
    for policy in dict.fromkeys(cell.mixing.method for cell, _ in results):
        top1 = {loss: by_cell[(policy, loss)]["val_top1"] for loss in loss_names}
        row = [policy] + [f"{top1[loss]:.1f}" for loss in loss_names]
        if "mce" in loss_names and len(loss_names) > 1:
            row += [f"{top1[loss] - top1['mce']:+.1f}" for loss in loss_names if loss != "mce"]
        seconds = sum(by_cell[(policy, loss)]["train_seconds"] for loss in loss_names)
        seconds /= len(loss_names)
        table.add_row(*row, f"{seconds:.1f}")
    return table


if __name__ == "__main__":
    app()
