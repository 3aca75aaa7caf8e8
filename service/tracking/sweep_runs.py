"""A sweep's parent run: created with its experiment, reopened on resume, closed with the report.

The parent run is named after the sweep id; it holds the spec (``spec.yaml``), the sweep's tags
and provenance, and at the end the results table and the report (``report/``) and, for a tuning
sweep, Optuna's plots of each study (``optuna/<cell id>/``: ``service.tracking.study_plots``). An
artifact that cannot be stored never fails the sweep: the problem is returned, tagged on the run
and logged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from service.storage.paths import AnyPath, local_file
from service.tracking.provenance import provenance
from service.tracking.store import Tracking, artifact_error, retrying
from service.tracking.uri import redacted, remember

SWEEP_ID_TAG = "dmsweep.sweep_id"
KIND_TAG = "dmsweep.kind"

logger = logging.getLogger(__name__)


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another sweep of the same spec created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_sweep(
    *,
    uri: str,
    experiment: str,
    sweep_id: str,
    spec_file: AnyPath,
    tags: Mapping[str, str],
    artifact_location: str | None = None,
    attempts: int = 5,
) -> Tracking:
    """Create the sweep's parent run (and its experiment when new); where it is.

    Idempotent: a parent run of the sweep that exists (made by an earlier attempt) is reused.
    """
    client = MlflowClient(tracking_uri=uri)
    experiment_id = retrying(
        lambda: _experiment_id(client, experiment, artifact_location), attempts
    )
    # A first attempt of a service-named sweep that died during set-up may have made it.
    run_id = find_sweep_run(client, experiment_id, sweep_id, attempts)
    if run_id is None:
        run_id = retrying(
            lambda: client.create_run(
                experiment_id,
                run_name=sweep_id,
                tags={SWEEP_ID_TAG: sweep_id, KIND_TAG: "sweep", **tags, **provenance()},
            ),
            attempts,
        ).info.run_id
    try:
        with local_file(spec_file) as local:
            retrying(lambda: client.log_artifact(run_id, str(local)), attempts)
    except Exception as error:  # the spec is in the sweep folder all the same
        problem = artifact_error(client, run_id, spec_file.name, error)
        logger.warning("tracking: %s", problem)
    # Stored in sweep.json and the trials' configs: without credentials (tracking.uri).
    return Tracking(remember(uri), experiment_id, run_id, sweep_id)


def find_sweep_run(
    client: MlflowClient, experiment_id: str, sweep_id: str, attempts: int = 5
) -> str | None:
    """The parent run of a sweep, or None (sweep ids are names: no quotes inside)."""
    found = retrying(
        lambda: client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{KIND_TAG}` = 'sweep'",
            max_results=1,
        ),
        attempts,
    )
    return found[0].info.run_id if found else None


def reopen_sweep(tracking: Tracking, attempts: int = 5) -> None:
    """Mark a resumed sweep's parent run as running again."""
    client = tracking.client()
    retrying(lambda: client.update_run(tracking.parent_run_id, status="RUNNING"), attempts)


def finish_sweep(
    tracking: Tracking,
    outputs: Mapping[str, AnyPath],
    counts: Mapping[str, int],
    status: str = "FINISHED",
    attempts: int = 5,
    plots: Sequence[tuple[AnyPath, str]] = (),
) -> list[str]:
    """Attach the results and report to the parent run and close it; the artifacts it lacks.

    ``plots``: (file, the run's folder for it) of Optuna's plots (``study_plots.StudyPlot``).
    The outputs are already on disk: an artifact store that fails leaves the run without them
    (said in a tag and a warning), it does not fail the sweep.
    """
    client = tracking.client()
    problems = []
    for path, folder in [*((path, "report") for path in outputs.values()), *plots]:
        try:
            with local_file(path) as local:
                log = functools.partial(
                    client.log_artifact, tracking.parent_run_id, str(local), folder
                )
                retrying(log, attempts)
        except Exception as error:
            problems.append(artifact_error(client, tracking.parent_run_id, folder, error))
            logger.warning("tracking: %s", problems[-1])
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    retrying(lambda: client.log_batch(tracking.parent_run_id, metrics=metrics), attempts)
    retrying(lambda: client.set_terminated(tracking.parent_run_id, status=status), attempts)
    return problems


def run_url(tracking: Tracking, ui: str | None = None) -> str:
    """Where the MLflow UI at ``ui`` shows the parent run.

    Default: the tracking server without its credentials; a relative link for a local store.
    """
    path = f"#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}"
    # sweep.json files written before URIs were stored redacted may still hold credentials.
    base = ui or (
        redacted(tracking.uri) if tracking.uri.startswith(("http://", "https://")) else None
    )
    return f"{base.rstrip('/')}/{path}" if base else path
