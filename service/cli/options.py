"""What the command line's commands share: the console, option types, failing with a message."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()

# What each option means, as ``--help`` shows it.
_HELP = {
    "storage": "Where sweeps live: a folder or a bucket prefix, s3://BUCKET/PREFIX (default: "
    "the spec's storage_path, ./runs).",
    "address": "A Ray cluster to join (ray://, host:port or auto); default: a local Ray.",
    "server": "A sweep service URL ($DMSWEEP_SERVER); its token from $DMSWEEP_API_TOKEN.",
    "sweep_id": "Name the new sweep (the sweep service does); default <name>-<UTC time>.",
    "tracking": "MLflow tracking URI (default: the spec's, else runs/mlflow.db); from the "
    "environment it keeps a password off the command line.",
    "sweep": "A sweep id (under --storage-path) or its folder.",
    "trial": "A trial id or name (or a unique prefix of either).",
}
# A string: a bucket URI would lose a slash as a Path (service.storage.paths.as_path reads it).
StoragePath = Annotated[str | None, typer.Option(help=_HELP["storage"])]
Address = Annotated[str | None, typer.Option(help=_HELP["address"])]
Server = Annotated[str | None, typer.Option(envvar="DMSWEEP_SERVER", help=_HELP["server"])]
SweepIdOption = Annotated[str | None, typer.Option(help=_HELP["sweep_id"])]
TrackingUri = Annotated[
    str | None, typer.Option(envvar="DMSWEEP_TRACKING_URI", help=_HELP["tracking"])
]
SweepId = Annotated[str, typer.Argument(help=_HELP["sweep"])]
TrialText = Annotated[str | None, typer.Argument(help=_HELP["trial"])]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error; the exit to raise (2: the input is wrong)."""
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)
