"""Links from a report to each trial's MLflow run.

A trial's child run is nested under the sweep's parent run and tagged with the Tune trial id
(``service.tracking.trial_runs``); the runs are found with one search over the parent's
children.

The MLflow UI shows a run at ``<ui>/#/experiments/<experiment id>/runs/<run id>``. A sweep
tracked by an MLflow server links to that server (without its credentials); one in the local
SQLite store links to the UI that ``mlflow ui --backend-store-uri <store>`` serves, at
``LOCAL_UI`` by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.tracking.store import quick_http
from service.tracking.trial_runs import PARENT_TAG, TRIAL_ID_TAG
from service.tracking.uri import redacted, with_credentials

LOCAL_UI = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class RunLinks:
    """Trial id -> URL of its MLflow run, and a sentence on where the links lead (or why none)."""

    urls: dict[str, str] = field(default_factory=dict)
    note: str = "the sweep was not tracked in MLflow: no run links"


def is_server(uri: str) -> bool:
    """Whether the tracking URI is an MLflow server (its UI at the same address)."""
    return uri.startswith(("http://", "https://"))


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """Where the MLflow UI at ``ui`` shows a run."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def trial_run_links(tracking: Mapping[str, str] | None, ui: str | None = None) -> RunLinks:
    """The run of every trial of a sweep tracked at ``tracking`` (``SweepInfo.tracking``).

    ``ui`` is the MLflow UI to link to; default: the server itself, or ``LOCAL_UI`` for a local
    store. A store that cannot be read gives no links and a note saying why.
    """
    if not tracking:
        return RunLinks()
    from mlflow import MlflowClient

    uri = tracking["uri"]  # stored without credentials; the process's own are put back
    experiment_id = tracking["experiment_id"]
    base = ui or (redacted(uri) if is_server(uri) else LOCAL_UI)
    client = MlflowClient(tracking_uri=with_credentials(uri))
    found: dict[str, str] = {}
    try:
        with quick_http():
            token = None
            while True:
                page = client.search_runs(
                    [experiment_id],
                    filter_string=f"tags.`{PARENT_TAG}` = '{tracking['parent_run_id']}'",
                    max_results=1000,
                    page_token=token,
                )
                for run in page:
                    trial_id = run.data.tags.get(TRIAL_ID_TAG)
                    if trial_id:
                        found[trial_id] = run_url(base, experiment_id, run.info.run_id)
                token = page.token
                if not token:
                    break
    except Exception as error:  # the report is written all the same, without links
        return RunLinks(note=f"MLflow at {uri} could not be read ({error}): no run links")
    if is_server(uri) and ui is None:
        note = f"links open the MLflow server at {uri}"
    else:
        note = (
            f"links open the MLflow UI at {base}; for this sweep's store start it with "
            f"`mlflow ui --backend-store-uri {uri}` (`dmsweep ui` for the default store)"
        )
    return RunLinks(found, note)
