"""A sweep's parent run: created with its experiment, reopened on resume, closed with the report.

The parent run is named after the sweep id; it holds the spec (``spec.yaml``), the sweep's tags
and provenance, and at the end the results table and the report. An artifact that cannot be
stored never fails the sweep: the problem is returned, tagged on the run and logged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from service.tracking.provenance import provenance
from service.tracking.store import Tracking, artifact_error, retrying

SWEEP_ID_TAG = "dmsweep.sweep_id"

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
    spec_file: Path,
    tags: Mapping[str, str],
    artifact_location: str | None = None,
) -> Tracking:
    """Create the sweep's parent run (and its experiment when new); where it is."""
    client = MlflowClient(tracking_uri=uri)
    experiment_id = retrying(lambda: _experiment_id(client, experiment, artifact_location))
    run = retrying(
        lambda: client.create_run(
            experiment_id,
            run_name=sweep_id,
            tags={SWEEP_ID_TAG: sweep_id, "dmsweep.kind": "sweep", **tags, **provenance()},
        )
    )
    try:
        retrying(lambda: client.log_artifact(run.info.run_id, str(spec_file)))
    except Exception as error:  # the spec is in the sweep folder all the same
        problem = artifact_error(client, run.info.run_id, spec_file.name, error)
        logger.warning("tracking: %s", problem)
    return Tracking(uri, experiment_id, run.info.run_id, sweep_id)


def reopen_sweep(tracking: Tracking) -> None:
    """Mark a resumed sweep's parent run as running again."""
    client = tracking.client()
    retrying(lambda: client.update_run(tracking.parent_run_id, status="RUNNING"))


def finish_sweep(
    tracking: Tracking,
    outputs: Mapping[str, Path],
    counts: Mapping[str, int],
    status: str = "FINISHED",
) -> list[str]:
    """Attach the results and report to the parent run and close it; the artifacts it lacks.

    The outputs are already on disk: an artifact store that fails leaves the run without them
    (said in a tag and a warning), it does not fail the sweep.
    """
    client = tracking.client()
    problems = []
    for path in outputs.values():
        try:
            log = functools.partial(
                client.log_artifact, tracking.parent_run_id, str(path), "report"
            )
            retrying(log)
        except Exception as error:
            problems.append(artifact_error(client, tracking.parent_run_id, "report", error))
            logger.warning("tracking: %s", problems[-1])
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    retrying(lambda: client.log_batch(tracking.parent_run_id, metrics=metrics))
    retrying(lambda: client.set_terminated(tracking.parent_run_id, status=status))
    return problems


def run_url(tracking: Tracking) -> str:
    """Where the parent run is shown in the MLflow UI (relative for a local store)."""
    path = f"#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}"
    if tracking.uri.startswith(("http://", "https://")):
        return f"{tracking.uri.rstrip('/')}/{path}"
    return path
