"""The ``dmsweep`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.spec import check_data as data_problems
from service.spec import expand, field_reference, json_schema, load_spec, summary
from service.train import train_in_process
from trainers.data import LAYOUTS, prepare

app = typer.Typer(help="Sweeps of Decoupled Mixup (DM) on Ray.", no_args_is_help=True)
data_app = typer.Typer(help="Data sets: convert published layouts.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()


@app.callback()
def main() -> None:
    """Run, tune and report the Decoupled Mixup benchmark grid."""


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


def _client(server: str):
    import os

    from service.client import ServiceClient
    from service.settings import SettingsError, _read_token

    try:
        token = _read_token(os.environ, "DMSWEEP_API_TOKEN", "DMSWEEP_API_TOKEN_FILE")
    except SettingsError as error:
        raise _fail(str(error)) from None
    return ServiceClient(server, token)


def _served(call):
    """Run a request to the service; its refusal shown as the server phrased it."""
    from service.client import ServiceError

    try:
        return call()
    except ServiceError as error:
        label = f"server ({error.status})" if error.status else "server"
        console.print(f"[red]{label}:[/] {error}", highlight=False)
        raise typer.Exit(2 if error.status in (413, 415, 422) else 1) from None


def _print_sweep(view: dict) -> None:
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


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _load(spec_file: Path):
    try:
        text = spec_file.read_text()
    except OSError as error:
        raise _fail(f"{spec_file}: {error.strerror or error}") from None
    try:
        return load_spec(spec_file), text
    except ValueError as error:
        raise _fail(str(error)) from None


def _execute(folder, address: str | None, resume: bool, total: int, metric: str) -> None:
    from service.engine import SpecError, execute
    from service.progress import SweepProgress

    try:
        with SweepProgress(console, total, metric) as progress:
            if resume:
                progress.done_before(folder.records())
            outcome = execute(folder, address=address, resume=resume, on_change=progress)
    except SpecError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: continue with `dmsweep resume {folder.path}`")
        raise typer.Exit(130) from None
    _print_outcome(outcome)
    raise typer.Exit(outcome.exit_code)


def _print_outcome(outcome) -> None:
    from rich.markdown import Markdown

    folder = outcome.folder
    counts = ", ".join(f"{n} {status}" for status, n in outcome.counts.items() if n)
    console.print(f"\n[bold]{folder.sweep_id}[/]: {counts or 'no trial finished'}")
    if "markdown" in outcome.outputs:
        console.print(Markdown(outcome.outputs["markdown"].read_text()))
    for best in outcome.best:
        setting = ", ".join(f"{k}={v:g}" for k, v in best["setting"].items())
        console.print(f"best for {best['cell']} (seed {best['seed']}): {setting}")
    for record in folder.records():
        if record["status"] == "failed":
            console.print(f"[red]failed[/] {record['name']}: {record.get('error', '')}")
            console.print(f"  the log: dmsweep logs {folder.path} {record['trial_id']}")
    for name, path in outcome.outputs.items():
        console.print(f"{name}: {path}")
    for problem in outcome.tracking_problems:
        console.print(f"[yellow]not in MLflow[/]: {problem}", highlight=False)
    state = folder.read_state()
    console.print(f"MLflow: {state['tracking']['uri']} (open it with `dmsweep ui`)")
    if outcome.interrupted:
        console.print(f"[yellow]interrupted[/]: continue with `dmsweep resume {folder.path}`")


def _start(
    spec_file: Path,
    address: str | None,
    storage_path: Path | None,
    tuning: bool,
    sweep_id: str | None = None,
    tracking_uri: str | None = None,
):
    from service.engine import SpecError, create_sweep, preflight, total_trials

    spec, text = _load(spec_file)
    if tuning and spec.search is None:
        raise _fail(f"{spec_file}: has no search section; `dmsweep run` runs its grid")
    info = summary(spec)
    try:
        preflight(spec, address)
        folder = create_sweep(
            spec, text, storage_path=storage_path, tracking_uri=tracking_uri, sweep_id=sweep_id
        )
    except SpecError as error:
        raise _fail(str(error)) from None
    total = total_trials(spec)
    console.print(
        f"[bold]{folder.sweep_id}[/]: {info['cells']} cells, {total} trials "
        f"({', '.join(info['methods'])} x {', '.join(info['losses'])}); folder {folder.path}"
    )
    metric = spec.search.metric if spec.search else "val_top1"
    _execute(folder, address, resume=False, total=total, metric=metric)


SweepIdOption = Annotated[
    str | None,
    typer.Option(help="Name the new sweep (the sweep service does); default <name>-<UTC time>."),
]
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: the spec's, else runs/mlflow.db)."),
]


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec (YAML).")],
    address: Address = None,
    storage_path: StoragePath = None,
    sweep_id: SweepIdOption = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Run every trial of a sweep spec on Ray; results, report and MLflow runs at the end.

    Exit status: 0 every trial succeeded, 1 some failed (the report is still written), 2 the
    spec is invalid, 130 interrupted (continue with `dmsweep resume`).
    """
    _start(spec_file, address, storage_path, False, sweep_id, tracking_uri)


@app.command()
def tune(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec with a search section.")],
    address: Address = None,
    storage_path: StoragePath = None,
    sweep_id: SweepIdOption = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Tune a spec's search parameters per cell with Optuna (and ASHA); exit status as `run`."""
    _start(spec_file, address, storage_path, True, sweep_id, tracking_uri)


def _find(sweep: str, storage_path: Path | None):
    from service.sweep_folder import find_sweep

    try:
        return find_sweep(sweep, storage_path or Path("runs"))
    except ValueError as error:
        raise _fail(str(error)) from None


SweepId = Annotated[str, typer.Argument(help="A sweep id (under --storage-path) or its folder.")]


@app.command()
def resume(
    sweep: SweepId, address: Address = None, storage_path: StoragePath = None, server: Server = None
) -> None:
    """Continue a sweep whose driver died or was interrupted; finished trials are kept."""
    import yaml

    if server:
        _print_sweep(_served(lambda: _client(server).resume(sweep)))
        return

    from service.engine import total_trials
    from service.spec import spec_from_dict

    folder = _find(sweep, storage_path)
    spec = spec_from_dict(yaml.safe_load(folder.spec_file.read_text()))
    total = total_trials(spec)
    metric = spec.search.metric if spec.search else "val_top1"
    console.print(f"[bold]{folder.sweep_id}[/]: resuming ({len(folder.records())} trials done)")
    _execute(folder, address, resume=True, total=total, metric=metric)


@app.command()
def report(sweep: SweepId, storage_path: StoragePath = None, server: Server = None) -> None:
    """Write and print the report of a sweep from the trials finished so far."""
    import yaml
    from rich.markdown import Markdown

    if server:
        console.print(Markdown(_served(lambda: _client(server).report(sweep))))
        return

    from service.engine import write_sweep_report
    from service.spec import spec_from_dict

    folder = _find(sweep, storage_path)
    records = folder.records()
    if not records:
        raise _fail(f"{folder.sweep_id}: no trial has finished yet", 1)
    spec = spec_from_dict(yaml.safe_load(folder.spec_file.read_text()))
    outputs = write_sweep_report(folder, spec, records)
    console.print(Markdown(outputs["markdown"].read_text()))
    for name, path in outputs.items():
        console.print(f"{name}: {path}")


@app.command()
def logs(
    sweep: SweepId,
    trial: Annotated[
        str | None, typer.Argument(help="A trial id or name (or a unique prefix of either).")
    ] = None,
    storage_path: StoragePath = None,
    server: Server = None,
) -> None:
    """List a sweep's trials, or print one trial's log and the traceback of its failure.

    With ``--server``: the sweep's Ray job output, or one trial's log.
    """
    if server:
        print(_served(lambda: _client(server).logs(sweep, trial)), end="")
        return
    folder = _find(sweep, storage_path)
    records = {r["trial_id"]: r for r in folder.records()}
    logged = (
        sorted(p.stem for p in folder.logs_dir.glob("*.log")) if folder.logs_dir.is_dir() else []
    )
    if trial is None:
        table = Table(title=f"{folder.sweep_id}: trials")
        for column in ("trial", "name", "status", "error"):
            table.add_column(column)
        for trial_id in sorted(set(logged) | set(records)):
            record = records.get(trial_id, {})
            table.add_row(
                trial_id,
                record.get("name", ""),
                record.get("status", "running"),
                (record.get("error") or "")[:80],
            )
        console.print(table)
        return
    matches = [
        t
        for t in sorted(set(logged) | set(records))
        if t.startswith(trial) or records.get(t, {}).get("name", "").startswith(trial)
    ]
    if len(matches) != 1:
        found = ", ".join(matches) if matches else "none"
        raise _fail(f"trial {trial!r} matches {found}; `dmsweep logs {sweep}` lists them", 1)
    log_file = folder.log_file(matches[0])
    if log_file.is_file():
        print(log_file.read_text(), end="")
    record = records.get(matches[0])
    if record is not None and record.get("traceback"):
        print(f"--- {record['status']}: {record.get('error')}\n{record['traceback']}", end="")


@app.command()
def ui(
    storage_path: StoragePath = None,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the local store of the sweeps (the embedded default)."""
    import os
    import sys

    from service.tracking import default_tracking_uri

    root = storage_path or Path("runs")
    if not (root / "mlflow.db").is_file():
        raise _fail(f"no MLflow store at {root / 'mlflow.db'}: run a sweep first")
    uri = default_tracking_uri(root)
    console.print(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C stops it")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    os.execv(sys.executable, [*command, "--host", host, "--port", str(port)])


def _need_server(server: str | None) -> str:
    if not server:
        raise _fail("no server: pass --server URL or set DMSWEEP_SERVER")
    return server


@app.command()
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
    """Submit a sweep spec to the sweep service; it runs there as a Ray job."""
    client = _client(_need_server(server))
    if not spec_file.is_file():
        raise _fail(f"{spec_file}: no such file")
    _print_sweep(_served(lambda: client.submit(spec_file, idempotency_key)))


@app.command()
def status(
    sweep: Annotated[str | None, typer.Argument(help="A sweep id; default: list them all.")] = None,
    server: Server = None,
) -> None:
    """The state of one sweep of the service, or a table of all of them."""
    client = _client(_need_server(server))
    if sweep is not None:
        _print_sweep(_served(lambda: client.sweep(sweep)))
        return
    table = Table(title=f"sweeps on {client.server}")
    for column in ("sweep", "state", "trials", "failed", "best"):
        table.add_column(column)
    for view in _served(client.sweeps):
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


@app.command()
def cancel(
    sweep: Annotated[str, typer.Argument(help="A sweep id.")], server: Server = None
) -> None:
    """Stop a sweep of the service (its Ray job); it can be resumed later."""
    _print_sweep(_served(lambda: _client(_need_server(server)).cancel(sweep)))


@app.command()
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

    DMSWEEP_DATABASE_URL, DMSWEEP_RAY_ADDRESS, DMSWEEP_MLFLOW_URI, DMSWEEP_DATA_ROOTS,
    DMSWEEP_STORAGE_ROOT, DMSWEEP_API_TOKEN / DMSWEEP_API_TOKEN_FILE (see service/settings.py).
    """
    import uvicorn

    from service.api import create_app
    from service.settings import ServiceSettings, SettingsError

    try:
        settings = ServiceSettings.from_env()
        app_ = create_app(settings, require_token=not insecure_no_auth)
    except (SettingsError, ValueError) as error:
        raise _fail(str(error)) from None
    if insecure_no_auth:
        console.print("[yellow]warning:[/] no token: anyone who reaches this port may submit")
    console.print(
        f"dmsweep service on http://{host}:{port} (Ray {settings.ray_address}, storage "
        f"{settings.storage_root}, store {_redacted(settings.database_url)})",
        highlight=False,
    )
    uvicorn.run(app_, host=host, port=port, log_level="info")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
def schema(
    markdown: Annotated[
        bool, typer.Option(help="Print the field reference (Markdown) instead.")
    ] = False,
) -> None:
    """Print the JSON schema of a sweep spec (or, with --markdown, the field reference)."""
    if markdown:
        print(field_reference(), end="")
    else:
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


if __name__ == "__main__":
    app()
