"""The ``dmsweep`` command line (typer + rich): local commands and the sweep service's client."""

from service.cli.app import app

__all__ = ["app"]
