"""The commands that run on this machine: run, tune, resume, report, logs, ui, train, validate."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.markdown import Markdown
from rich.table import Table

from service.cli.options import (
    Address,
    StoragePath,
    SweepIdOption,
    TrackingUri,
    console,
    fail,
)
from service.storage.paths import AnyPath, as_path
from service.tracking.uri import remember

# The spec model, the results and the training code import torch and timm (seconds): each
# command loads what it uses, so that `dmsweep --help` and the service's client commands
# (service/cli/remote.py) start at once.
if TYPE_CHECKING:
    from service.cli.progress import SweepProgress
    from service.results.folder import SweepFolder
    from service.spec.model import SweepSpec
    from service.sweep.engine import SweepOutcome


def _load(spec_file: AnyPath) -> tuple[SweepSpec, str]:
    from service.spec.reading import load_spec

    try:
        text = spec_file.read_text()
    except OSError as error:
        raise fail(f"{spec_file}: {error.strerror or error}") from None
    try:
        return load_spec(spec_file), text
    except ValueError as error:
        raise fail(str(error)) from None


def _progress(spec: SweepSpec, folder: SweepFolder) -> SweepProgress:
    """The live line, whose best trial is the one the report will headline (``ranking``)."""
    from service.cli.progress import SweepProgress
    from service.results.metrics import ranking
    from service.spec.cells import total_trials

    return SweepProgress(console, folder, total_trials(spec), *ranking(spec))


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a line comes.

    The progress display replaces it while it is live; lines written through its stand-in are
    printed above the bars.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:  # StreamHandler.__init__ assigns it
        pass


def _log_warnings_with_time() -> None:
    """Timestamp a sweep driver's warnings (a tracking store that held it, ...).

    Its output is read after the fact, beside the trials' timestamped logs.
    """
    stamped = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
    )
    stamped.converter = time.gmtime  # UTC, as the trials' logs
    handler = _CurrentStderr()
    handler.setFormatter(stamped)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def _execute(folder: SweepFolder, address: str | None, resume: bool) -> None:
    from service.sweep.engine import SpecError, execute

    spec = folder.read_spec()
    try:
        with _progress(spec, folder):
            outcome = execute(folder, address=address, resume=resume)
    except SpecError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: continue with `dmsweep resume {folder.path}`")
        raise typer.Exit(130) from None
    _print_outcome(outcome)
    raise typer.Exit(outcome.exit_code)


def _print_outcome(outcome: SweepOutcome) -> None:
    from service.results.records import TrialState

    folder = outcome.folder
    counts = ", ".join(f"{n} {status}" for status, n in outcome.counts.items() if n)
    console.print(f"\n[bold]{folder.sweep_id}[/]: {counts or 'no trial finished'}")
    if "markdown" in outcome.outputs:
        console.print(Markdown(outcome.outputs["markdown"].read_text()))
    for best in outcome.best:
        setting = ", ".join(f"{k}={v:g}" for k, v in best.setting.items())
        console.print(f"best for {best.cell} (seed {best.seed}): {setting}")
    for record in folder.records():
        if record.status == TrialState.FAILED:
            console.print(f"[red]failed[/] {record.name}: {record.error or ''}")
            console.print(f"  the log: dmsweep logs {folder.path} {record.trial_id}")
    for name, path in outcome.outputs.items():
        console.print(f"{name}: {path}")
    if folder.study_plots_dir.is_dir():
        console.print(f"Optuna's plots: {folder.study_plots_dir}")
        console.print(f"  the search in optuna-dashboard: `dmsweep studies {folder.path}`")
    for problem in outcome.tracking_problems:
        console.print(f"[yellow]not in MLflow[/]: {problem}", highlight=False)
    tracking = folder.read_state().tracking
    if tracking is not None:
        console.print(f"MLflow: {tracking['uri']} (open it with `dmsweep ui`)")
    if outcome.interrupted:
        console.print(f"[yellow]interrupted[/]: continue with `dmsweep resume {folder.path}`")


def _start(
    spec_file: AnyPath,
    address: str | None,
    storage_path: str | None,
    tuning: bool,
    sweep_id: str | None = None,
    tracking_uri: str | None = None,
) -> None:
    from service.spec.cells import summary, total_trials
    from service.sweep.engine import SpecError, create_sweep, preflight

    _log_warnings_with_time()
    spec, text = _load(spec_file)
    uri = tracking_uri or spec.tracking_uri
    if uri:
        remember(uri)  # before Ray starts: a local Ray's workers inherit this environment
    if tuning and spec.search is None:
        raise fail(f"{spec_file}: has no search section; `dmsweep run` runs its grid")
    info = summary(spec)
    try:
        preflight(spec, address)
        folder = create_sweep(
            spec, text, storage_path=storage_path, tracking_uri=tracking_uri, sweep_id=sweep_id
        )
    except SpecError as error:
        raise fail(str(error)) from None
    total = total_trials(spec)
    console.print(
        f"[bold]{folder.sweep_id}[/]: {info['cells']} cells, {total} trials "
        f"({', '.join(info['methods'])} x {', '.join(info['losses'])}); folder {folder.path}"
    )
    _execute(folder, address, resume=False)


def _start_command(tuning: bool, summary: str) -> Callable[..., None]:
    """The ``run`` or ``tune`` command: one signature, ``tune`` needing a search section."""

    def command(
        spec_file: Annotated[
            str, typer.Argument(help="A sweep spec (YAML): a file, or s3://BUCKET/KEY.")
        ],
        address: Address = None,
        storage_path: StoragePath = None,
        sweep_id: SweepIdOption = None,
        tracking_uri: TrackingUri = None,
    ) -> None:
        _start(as_path(spec_file), address, storage_path, tuning, sweep_id, tracking_uri)

    command.__doc__ = summary
    return command


run = _start_command(
    False,
    """Run every trial of a sweep spec on Ray; results, report and MLflow runs at the end.

    Exit status: 0 every trial succeeded, 1 some failed (the report is still written), 2 the
    spec is invalid, 130 interrupted (continue with `dmsweep resume`).
    """,
)
tune = _start_command(
    True, "Tune a spec's search parameters per cell with Optuna (and ASHA); exit status as `run`."
)


class LocalSweeps:
    """``resume``, ``report`` and ``logs`` of the sweeps in a storage path of this machine."""

    def __init__(self, storage_path: str | None, address: str | None = None) -> None:
        self.storage_path = as_path(storage_path or "runs")
        self.address = address

    def _find(self, sweep: str) -> SweepFolder:
        from service.results.folder import find_sweep

        try:
            return find_sweep(sweep, self.storage_path)
        except ValueError as error:
            raise fail(str(error)) from None

    def resume(self, sweep: str) -> None:
        """Continue a sweep whose driver died or was interrupted; finished trials are kept."""
        _log_warnings_with_time()
        folder = self._find(sweep)
        console.print(f"[bold]{folder.sweep_id}[/]: resuming ({len(folder.records())} trials done)")
        _execute(folder, self.address, resume=True)

    def report(self, sweep: str) -> None:
        """Write and print the report of the trials finished so far."""
        from service.results.report import write_sweep_report

        folder = self._find(sweep)
        records = folder.records()
        if not records:
            raise fail(f"{folder.sweep_id}: no trial has finished yet", 1)
        outputs = write_sweep_report(folder, folder.read_spec(), records)
        console.print(Markdown(outputs["markdown"].read_text()))
        for name, path in outputs.items():
            console.print(f"{name}: {path}")

    def logs(self, sweep: str, trial: str | None) -> None:
        """A table of the sweep's trials, or one trial's log and the traceback of its failure."""
        folder = self._find(sweep)
        records = {r.trial_id: r for r in folder.records()}
        if trial is None:
            table = Table(title=f"{folder.sweep_id}: trials")
            for column in ("trial", "name", "status", "error"):
                table.add_column(column)
            for trial_id in sorted(set(folder.started_trials()) | set(records)):
                record = records.get(trial_id)
                if record is None:  # started, not ended
                    table.add_row(trial_id, "", "running", "")
                else:
                    table.add_row(trial_id, record.name, record.status, (record.error or "")[:80])
            console.print(table)
            return
        try:
            trial_id = folder.find_trial(trial)
        except LookupError as error:
            raise fail(f"{error}; `dmsweep logs {sweep}` lists them", 1) from None
        log_file = folder.log_file(trial_id)
        if log_file.is_file():
            print(log_file.read_text(), end="")
        ended = records.get(trial_id)
        if ended is not None and ended.traceback:
            print(f"--- {ended.status}: {ended.error}\n{ended.traceback}", end="")


def ui(
    storage_path: StoragePath = None,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the local store of the sweeps (the embedded default)."""
    from service.tracking.store import default_tracking_uri

    root = as_path(storage_path or "runs")
    if not isinstance(root, Path):
        raise fail(
            f"{root} is a bucket: its sweeps are tracked by a tracking server; open that "
            "server's UI"
        )
    if not (root / "mlflow.db").is_file():
        raise fail(f"no MLflow store at {root / 'mlflow.db'}: run a sweep first")
    uri = default_tracking_uri(root)
    console.print(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C stops it")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    os.execv(sys.executable, [*command, "--host", host, "--port", str(port)])


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
    from service.cli.train import train_in_process

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


def validate(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary only.")] = False,
    check_data: Annotated[
        bool, typer.Option(help="Also check that every data set's root folder exists.")
    ] = False,
) -> None:
    """Check a sweep spec and print the cells and trials it expands into (exit 2 if invalid)."""
    from service.spec.cells import expand, summary
    from service.spec.data_check import data_problems
    from service.spec.reading import load_spec

    try:
        spec = load_spec(spec_file)
        cells = expand(spec)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    problems = [str(p) for p in data_problems(spec)] if check_data else []
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


def schema(
    markdown: Annotated[
        bool, typer.Option(help="Print the field reference (Markdown) instead.")
    ] = False,
) -> None:
    """Print the JSON schema of a sweep spec (or, with --markdown, the field reference)."""
    from service.spec.reference import field_reference, json_schema

    if markdown:
        print(field_reference(), end="")
    else:
        print(json.dumps(json_schema(), indent=2))


def data_prepare(
    layout: Annotated[
        str, typer.Argument(help="A published layout, e.g. cifar10 (an unknown one lists all).")
    ],
    source: Annotated[Path, typer.Argument(help="The folder holding the published layout.")],
    out: Annotated[Path, typer.Option(help="Where to write the converted data set.")],
    fmt: Annotated[
        str, typer.Option("--format", help="imagefolder, or parquet (shards written with pyarrow).")
    ] = "imagefolder",
    image_size: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Training size (default: the layout's). Parquet keeps larger photos as their "
            "original files; images of 64 px or less are stored decoded at this size.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace splits already in --out.")] = False,
) -> None:
    """Convert a published data set layout into ImageFolder or Parquet shards (format 2)."""
    from trainers.data import prepare

    try:
        written = prepare(layout, source, out, fmt, image_size=image_size, overwrite=overwrite)
    except (ValueError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    console.print(f"wrote {written}")
