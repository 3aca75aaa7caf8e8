"""The commands that talk to a sweep service (``--server``): submit, status, cancel, and serve."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from service.cli.client import ServiceClient, ServiceError
from service.cli.options import Server, console, fail
from service.plan.summary import summary_lines
from service.server.settings import SettingsError, read_token

T = TypeVar("T")


def client(server: str | None) -> ServiceClient:
    """A client of ``server`` with the token of ``$DMSWEEP_API_TOKEN(_FILE)``."""
    if not server:
        raise fail("no server: pass --server URL or set DMSWEEP_SERVER")
    try:
        token = read_token(os.environ, "DMSWEEP_API_TOKEN", "DMSWEEP_API_TOKEN_FILE")
    except SettingsError as error:
        raise fail(str(error)) from None
    return ServiceClient(server, token)


def served(call: Callable[[], T]) -> T:
    """Run a request to the service; its refusal shown as the server phrased it."""
    try:
        return call()
    except ServiceError as error:
        label = f"server ({error.status})" if error.status else "server"
        console.print(f"[red]{label}:[/] {error}", highlight=False)
        raise typer.Exit(2 if error.status in (413, 415, 422) else 1) from None


def print_sweep(view: dict[str, Any]) -> None:
    """One sweep as the service shows it: state, trials, best so far, Ray job, MLflow run."""
    trials = view["trials"]
    best = view.get("best") or {}
    best_text = ", ".join(f"{k}={v}" for k, v in best.items()) or "none yet"
    console.print(
        f"[bold]{view['id']}[/]: {view['state']}"
        + (f" ({view['message']})" if view.get("message") else ""),
        highlight=False,
    )
    console.print(
        f"  trials: {trials['done']}/{trials['total']} done, {trials['running']} running, "
        f"{trials['failed']} failed; best: {best_text}"
    )
    console.print(
        f"  Ray job: {view.get('ray_job_id') or '-'}   MLflow: {view.get('mlflow_run_url') or '-'}"
    )


class RemoteSweeps:
    """``resume``, ``report`` and ``logs`` of sweeps that a sweep service runs."""

    def __init__(self, server: str) -> None:
        self.client = client(server)

    def resume(self, sweep: str) -> None:
        """Ask the service to continue a failed or cancelled sweep."""
        print_sweep(served(lambda: self.client.resume(sweep)))

    def report(self, sweep: str) -> None:
        """The service's report of the trials finished so far."""
        console.print(Markdown(served(lambda: self.client.report(sweep))))

    def logs(self, sweep: str, trial: str | None) -> None:
        """The sweep's Ray job output, or one trial's log."""
        print(served(lambda: self.client.logs(sweep, trial)), end="")


def submit(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec (YAML, or JSON by suffix).")],
    server: Server = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Retrying with the same key and spec gives the same sweep, not a new one."
        ),
    ] = None,
) -> None:
    """Submit a sweep spec to the sweep service; it runs there as a Ray job.

    Prints the sweep and its plan: device-hours, wall time and cost as the service's
    calibration table gives them (`dmsweep plan SPEC` shows each cell).
    """
    service = client(server)
    if not spec_file.is_file():
        raise fail(f"{spec_file}: no such file")
    view = served(lambda: service.submit(spec_file, idempotency_key))
    print_sweep(view)
    print_plan_summary(view.get("plan"))


def print_plan_summary(plan: dict[str, Any] | None) -> None:
    """The totals and warnings of a sweep's plan, as the service made it."""
    if plan is None:
        return
    for line in summary_lines(plan):
        console.print(f"  plan: {escape(line)}", highlight=False)


def status(
    sweep: Annotated[str | None, typer.Argument(help="A sweep id; default: list them all.")] = None,
    server: Server = None,
) -> None:
    """The state of one sweep of the service, or a table of all of them."""
    service = client(server)
    if sweep is not None:
        print_sweep(served(lambda: service.sweep(sweep)))
        return
    table = Table(title=f"sweeps on {service.server}")
    for column in ("sweep", "state", "trials", "failed", "best"):
        table.add_column(column)
    for view in served(service.sweeps):
        trials = view["trials"]
        best = ", ".join(f"{k}={v}" for k, v in (view.get("best") or {}).items())
        table.add_row(
            view["id"],
            view["state"],
            f"{trials['done']}/{trials['total']}",
            str(trials["failed"]),
            best,
        )
    console.print(table)


def cancel(
    sweep: Annotated[str, typer.Argument(help="A sweep id.")], server: Server = None
) -> None:
    """Stop a sweep of the service (its Ray job); it can be resumed later."""
    print_sweep(served(lambda: client(server).cancel(sweep)))


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth", help="Serve without a token (local use only: anyone may submit)."
        ),
    ] = False,
) -> None:
    """Start the sweep service (FastAPI on uvicorn); configured by DMSWEEP_* variables.

    DMSWEEP_DATABASE_URL, DMSWEEP_RAY_ADDRESS, DMSWEEP_MLFLOW_URI, DMSWEEP_MLFLOW_PUBLIC_URL,
    DMSWEEP_DATA_ROOTS, DMSWEEP_STORAGE_ROOT, DMSWEEP_API_TOKEN / DMSWEEP_API_TOKEN_FILE (at
    least 32 characters), DMSWEEP_ALLOW_DOWNLOADS, DMSWEEP_TRUSTED_PROXIES
    (see service/server/settings.py).
    """
    import uvicorn

    from service.server.app import PROXY_HEADERS, create_app
    from service.server.settings import ServiceSettings, SettingsError, check_token

    if insecure_no_auth and not _is_loopback(host):
        raise fail(
            f"--insecure-no-auth serves without a token, so only on a loopback address "
            f"(127.0.0.1, ::1, localhost); got --host {host}. Set DMSWEEP_API_TOKEN to serve "
            "on the network"
        )
    try:
        settings = ServiceSettings.from_env()
        if settings.api_token is not None and not insecure_no_auth:
            check_token(settings.api_token)
        app_ = create_app(settings, require_token=not insecure_no_auth)
    except (SettingsError, ValueError) as error:
        raise fail(str(error)) from None
    if insecure_no_auth:
        console.print("[yellow]warning:[/] no token: anyone who reaches this port may submit")
    console.print(
        f"dmsweep service on http://{host}:{port} (Ray {settings.ray_address}, storage "
        f"{settings.storage_root}, store {_redacted(settings.database_url)})",
        highlight=False,
    )
    uvicorn.run(app_, host=host, port=port, log_level="info", proxy_headers=PROXY_HEADERS)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
