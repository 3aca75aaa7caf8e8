"""The ``dmsweep`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.demo import load_grid, run_grid

app = typer.Typer(help="Sweeps of Decoupled Mixup (DM) on Ray.", no_args_is_help=True)
console = Console()

DEMO_GRID = Path("search_spaces/demo.yaml")


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
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("", total=len(cells) * grid.epochs, last="")
        results = run_grid(
            grid,
            on_cell_start=lambda c: progress.update(task, description=f"{c.policy} / {c.loss}"),
            on_epoch=lambda e, acc: progress.update(
                task, advance=1, last=f"epoch {e + 1}: top-1 {acc:.1f}%"
            ),
        )
    console.print(_comparison_table(grid.losses, results))


def _comparison_table(losses, results) -> Table:
    by_cell = {(cell.policy, cell.loss): result for cell, result in results}
    loss_names = list(losses)
    table = Table(title="Top-1 accuracy (%) on the validation split, last epoch")
    table.add_column("policy")
    for loss in loss_names:
        table.add_column(loss, justify="right")
    if "mce" in loss_names and len(loss_names) > 1:
        for loss in loss_names:
            if loss != "mce":
                table.add_column(f"{loss} - mce", justify="right")
    table.add_column("s / cell", justify="right")
    for policy in dict.fromkeys(cell.policy for cell, _ in results):
        row = [policy] + [f"{by_cell[(policy, loss)].top1:.1f}" for loss in loss_names]
        if "mce" in loss_names and len(loss_names) > 1:
            base = by_cell[(policy, "mce")].top1
            row += [
                f"{by_cell[(policy, loss)].top1 - base:+.1f}"
                for loss in loss_names
                if loss != "mce"
            ]
        seconds = sum(by_cell[(policy, loss)].seconds for loss in loss_names) / len(loss_names)
        table.add_row(*row, f"{seconds:.1f}")
    return table


if __name__ == "__main__":
    app()
