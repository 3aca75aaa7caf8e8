"""What the command line's commands share: the console, option types, failing with a message."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

StoragePath = Annotated[
    Path | None,
    typer.Option(help="Where sweeps live (default: the spec's storage_path, ./runs)."),
]
Address = Annotated[
    str | None,
    typer.Option(help="A Ray cluster to join (ray://, host:port or auto); default: a local Ray."),
]
Server = Annotated[
    str | None,
    typer.Option(
        envvar="DMSWEEP_SERVER",
        help="A sweep service URL ($DMSWEEP_SERVER); its token from $DMSWEEP_API_TOKEN.",
    ),
]
SweepIdOption = Annotated[
    str | None,
    typer.Option(help="Name the new sweep (the sweep service does); default <name>-<UTC time>."),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: the spec's, else runs/mlflow.db)."),
]
SweepId = Annotated[str, typer.Argument(help="A sweep id (under --storage-path) or its folder.")]
TrialText = Annotated[
    str | None, typer.Argument(help="A trial id or name (or a unique prefix of either).")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error; the exit to raise (2: the input is wrong)."""
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)
