"""The sweep's parent run in MLflow (service/tracking/), on a real local store."""

from __future__ import annotations

import logging

from mlflow import MlflowClient

from service.tracking.sweep_runs import start_sweep


def test_a_sweep_starts_when_its_spec_cannot_be_stored_and_the_run_says_why(tmp_path, caplog):
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the artifact store's folder should be\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: broken-store\n")
    with caplog.at_level(logging.WARNING, logger="service.tracking"):
        track = start_sweep(
            uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="broken-store",
            sweep_id="broken-store-1",
            spec_file=spec,
            tags={},
            artifact_location=str(blocker / "broken-store"),
        )
    run = MlflowClient(tracking_uri=track.uri).get_run(track.parent_run_id)
    assert run.info.status == "RUNNING"
    assert str(blocker) in run.data.tags["dmsweep.artifact_error.spec.yaml"]
    assert "artifact spec.yaml was not stored: " in caplog.text
    assert str(blocker) in caplog.text
