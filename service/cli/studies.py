"""``dmsweep studies``: optuna-dashboard on the Optuna studies of a tuning sweep.

The sweep's folder does not record which database its driver kept the studies in, so the
command takes, as the driver did (``service.sweep.engine.study_storage``), the spec's
``search.storage`` (a SQLite file), else the folder's ``optuna.db`` when it is there (the
default), else the database ``DMSWEEP_OPTUNA_STORAGE`` (or the file ``_FILE``) names in this
environment; it says which, the URL without its password.

The dashboard runs in a fresh Python that replaces this one (as ``dmsweep ui`` runs MLflow's):
optuna-dashboard's own command, handed the URL in its environment, not on its command line,
where any user's ``ps`` would read a password. It shows every study of the database (a shared
PostgreSQL holds other sweeps' too); the command lists the sweep's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.cli.options import StoragePath, SweepId, console, fail

if TYPE_CHECKING:
    from service.results.folder import SweepFolder
    from service.spec.model import SweepSpec

DASHBOARD = "optuna-dashboard"  # the distribution and its console script
URL_VAR = "DMSWEEP_STUDIES_URL"  # how the fresh Python gets the URL
# What the fresh Python runs: the dashboard's command, as if `optuna-dashboard URL --host H
# --port P` had been typed (a Python's sys.argv is not its /proc/<pid>/cmdline).
SERVE = f"""
import os, sys
from importlib.metadata import entry_points
main = entry_points(group="console_scripts")["{DASHBOARD}"].load()
sys.argv = ["{DASHBOARD}", os.environ.pop("{URL_VAR}"), *sys.argv[1:]]
main()
"""


@dataclass(frozen=True)
class StudiesAt:
    """Where a sweep's studies are: the URL to open, the URL to show, and how it was chosen."""

    url: str
    shown: str
    origin: str


def locate(folder: SweepFolder, spec: SweepSpec) -> StudiesAt:
    """Where the studies of the tuning sweep in ``folder`` are; a ValueError says why not."""
    from service.spec.search import redact_url
    from service.sweep.searcher import STORAGE_FILE_VAR, STORAGE_VAR, url_from_env

    assert spec.search is not None
    if spec.search.storage is not None:
        where = StudiesAt(spec.search.storage, spec.search.storage, "the spec's search.storage")
    elif not folder.on_bucket and (folder.path / "optuna.db").is_file():
        where = StudiesAt(folder.optuna_url, folder.optuna_url, "the sweep folder's optuna.db")
    else:
        url = url_from_env(os.environ)
        if url is None:
            raise ValueError(
                f"sweep {folder.sweep_id} has no optuna.db in its folder and {STORAGE_VAR} (or "
                f"{STORAGE_FILE_VAR}) is not set: set it to the database the sweep's driver had, "
                "or wait for the sweep's first trial"
            )
        where = StudiesAt(url, redact_url(url), STORAGE_VAR)
    missing = _missing_sqlite_file(where.url)
    if missing is not None:  # opening it would make an empty database there
        raise ValueError(
            f"{where.shown} ({where.origin}) is not a file here: {missing} (a relative path is "
            "read from the folder the command runs in, as the sweep's driver read it)"
        )
    return where


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist; None for one that does, or a server."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.is_file() else path


def studies(
    sweep: SweepId,
    storage_path: StoragePath = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of optuna-dashboard.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve optuna-dashboard on a tuning sweep's Optuna studies (one per cell; Ctrl-C stops it)."""
    from service.results.folder import find_sweep
    from service.sweep.searcher import open_storage
    from service.tracking.study_plots import sweep_study_names

    try:
        folder = find_sweep(sweep, storage_path or "runs")
    except ValueError as error:
        raise fail(str(error)) from None
    spec = folder.read_spec()
    if spec.search is None:
        raise fail(
            f"sweep {folder.sweep_id} ran a grid (its spec has no search section): it has no "
            "Optuna studies; `dmsweep studies` shows those of a sweep started with `dmsweep tune`"
        )
    try:
        where = locate(folder, spec)
        names = sweep_study_names(open_storage(where.url), folder.sweep_id)
    except Exception as error:  # a variable that names no database, one that cannot be reached
        raise fail(f"the Optuna studies of sweep {folder.sweep_id}: {error}") from None
    if not names:
        raise fail(
            f"{where.shown} ({where.origin}) holds no Optuna study of sweep {folder.sweep_id} "
            f"(named {folder.sweep_id}:<cell id>): the sweep has not started a trial yet, or its "
            "driver kept them in another database"
        )
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise fail(f"{DASHBOARD} is not installed here: pip install {DASHBOARD}", 1)
    console.print(
        f"the Optuna studies of {folder.sweep_id} ({len(names)}) in {where.shown} "
        f"({where.origin}):",
        highlight=False,
    )
    for name in names:
        console.print(f"  {name}", highlight=False)
    console.print(f"optuna-dashboard on http://{host}:{port}; Ctrl-C stops it", highlight=False)
    sys.stdout.flush()
    env = {**os.environ, URL_VAR: where.url}
    # wsgiref, not gunicorn where installed (MLflow brings it): one process, ended by Ctrl-C,
    # and no control socket left in the home folder.
    serve = ["--host", host, "--port", str(port), "--server", "wsgiref"]
    os.execve(sys.executable, [sys.executable, "-c", SERVE, *serve], env)
