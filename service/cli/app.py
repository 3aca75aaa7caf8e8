"""The ``dmsweep`` command: this machine's commands and the sweep service's, in one app.

``resume``, ``report`` and ``logs`` work on either: a local storage path (``service.cli.local``)
or, with ``--server``, a sweep service (``service.cli.remote``).
"""

from __future__ import annotations

import typer

from service.cli import costs, local, remote, studies
from service.cli.options import Address, Server, StoragePath, SweepId, TrialText

app = typer.Typer(help="Sweeps of Decoupled Mixup (DM) on Ray.", no_args_is_help=True)
data_app = typer.Typer(help="Data sets: convert published layouts.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main() -> None:
    """Run, tune and report the Decoupled Mixup benchmark grid."""


def sweeps_at(
    server: str | None, storage_path: str | None, address: str | None = None
) -> local.LocalSweeps | remote.RemoteSweeps:
    """The sweeps a command works on: the service's at ``server``, else this machine's."""
    if server:
        return remote.RemoteSweeps(server)
    return local.LocalSweeps(storage_path, address)


@app.command()
def resume(
    sweep: SweepId, address: Address = None, storage_path: StoragePath = None, server: Server = None
) -> None:
    """Continue a sweep whose driver died or was interrupted; finished trials are kept."""
    sweeps_at(server, storage_path, address).resume(sweep)


@app.command()
def report(sweep: SweepId, storage_path: StoragePath = None, server: Server = None) -> None:
    """Write and print the report of a sweep from the trials finished so far."""
    sweeps_at(server, storage_path).report(sweep)


@app.command()
def logs(
    sweep: SweepId, trial: TrialText = None, storage_path: StoragePath = None, server: Server = None
) -> None:
    """List a sweep's trials, or print one trial's log and the traceback of its failure.

    With ``--server``: the sweep's Ray job output, or one trial's log.
    """
    sweeps_at(server, storage_path).logs(sweep, trial)


app.command("run")(local.run)
app.command("tune")(local.tune)
for local_command in (
    local.ui,
    local.train,
    local.validate,
    local.schema,
    costs.calibrate,
    costs.plan,
):
    app.command()(local_command)
for remote_command in (remote.submit, remote.status, remote.cancel, remote.serve):
    app.command()(remote_command)
data_app.command("prepare")(local.data_prepare)
app.command("studies")(studies.studies)
