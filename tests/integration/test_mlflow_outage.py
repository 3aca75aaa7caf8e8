"""The MLflow server goes away and comes back: no sweep ends for it, nothing is lost silently.

``test_training_goes_on_through_an_outage_and_no_metric_is_lost_silently``:

A one-trial sweep (`dmsweep run` in its own process, its own local Ray) tracks to an MLflow
server on PostgreSQL. Once the trial's first epoch is in MLflow the server is stopped; while it
is down the trial must go on training (its log gains epochs) and say that its metrics wait; then
the server is started again on the same port and store. At the end every epoch's metrics are
in MLflow's history with the values the trial logged, or, for any that are not, the trial's log
and the run's ``dmsweep.lost_metrics`` tag name exactly those.

``test_a_sweep_runs_through_mlflow_outages_and_its_runs_are_sent_later`` (issue 12, item 10):
on the session's Ray, MLflow is down before a sweep starts (the sweep runs untracked, its runs
are made later), and down from the first epoch of an ASHA sweep on, so that trials start, end
and are pruned while it is away. Both sweeps succeed; what MLflow did not take waits in the
sweep's ``tracking_outbox/`` and is sent once MLflow is back (as ``dmsweep resume`` does).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml
from mlflow import MlflowClient
from ray import tune
from services import BIN, MlflowServer, postgres_server, wait_until
from sweep_helpers import mlflow_children, run_spec, tiny_spec, tpe_asha, write_spec

from service.results.folder import SweepFolder
from service.sweep.callbacks import send_pending
from tests.support.processes import end_session, start_session
from tests.support.training import EPOCH_METRICS, SUMMARY_METRICS

EPOCHS = 16
SWEEP_ID = "outage-1"
# A Ray of its own: without an address, ray.init() joins the cluster that the last `ray start`
# on this machine recorded in /tmp/ray/ray_current_cluster, if any.
OWN_RAY = {"RAY_ADDRESS": "local"}
EPOCH_LINE = re.compile(r" epoch (\d+): .*?\bval_top1 (\S+?),")
WAITING = "metric values wait for the store"
LOST_LINE = re.compile(r"these metric values could not be sent: (.*)$", re.MULTILINE)


def epochs_in(log: Path) -> dict[int, float]:
    """val_top1 of each epoch the trial's log shows (4 significant digits)."""
    text = log.read_text() if log.is_file() else ""
    return {int(epoch): float(top1) for epoch, top1 in EPOCH_LINE.findall(text)}


def test_training_goes_on_through_an_outage_and_no_metric_is_lost_silently(tmp_path):
    storage = tmp_path / "runs"
    with postgres_server(tmp_path, databases=("mlflow",)) as pg:
        server = MlflowServer(tmp_path, pg.url("mlflow"))
        server.start()
        try:
            # 4,096 images per epoch, 1.5 s or so each: the server is usually back (it restarts
            # in 7 to 15 s) before the last epoch, and what waits goes with a later epoch's.
            spec = tiny_spec(
                "outage",
                grid={"method": ["mixup"], "loss": ["mce"]},
                epochs=EPOCHS,
                recipe_overrides={"lr": 0.02},  # the smoke recipe's 0.1 turned the loss NaN here
                data={
                    "synthetic": {
                        "num_classes": 4,
                        "image_size": 16,
                        "synthetic_images": {"train": 4096, "test": 256},
                    }
                },
                tracking_uri=server.url,
            )
            spec_file = write_spec(tmp_path, spec)
            sweep = start_session(
                [
                    str(BIN / "dmsweep"),
                    "run",
                    str(spec_file),
                    "--storage-path",
                    str(storage),
                    "--sweep-id",
                    SWEEP_ID,
                ],
                tmp_path / "dmsweep.log",
                env=OWN_RAY,
            )
            try:
                client = MlflowClient(tracking_uri=server.url)

                def sweep_running() -> None:
                    assert sweep.poll() is None, (tmp_path / "dmsweep.log").read_text()[-3000:]

                def child_run():
                    sweep_running()
                    experiment = client.get_experiment_by_name("outage")
                    if experiment is None:
                        return None
                    runs = client.search_runs(
                        [experiment.experiment_id],
                        filter_string=f"tags.`dmsweep.sweep_id` = '{SWEEP_ID}'",
                    )
                    return next((r for r in runs if "mlflow.parentRunId" in r.data.tags), None)

                run = wait_until(child_run, "the trial's child run", timeout_s=300)
                run_id, trial_id = run.info.run_id, run.data.tags["dmsweep.trial_id"]
                log = SweepFolder(storage / SWEEP_ID).log_file(trial_id)

                def first_epoch_tracked() -> bool:
                    sweep_running()
                    return bool(client.get_metric_history(run_id, "val_top1"))

                wait_until(first_epoch_tracked, "epoch 1 in MLflow", timeout_s=300, interval_s=0.1)
                server.stop()
                assert max(epochs_in(log)) < EPOCHS, "the trial ended before the outage began"

                # The trial says what waits, and trains on: an epoch after a refused write.
                def trained_after_a_refused_write() -> bool:
                    sweep_running()
                    text = log.read_text()
                    return WAITING in text and bool(EPOCH_LINE.search(text.split(WAITING, 1)[1]))

                wait_until(trained_after_a_refused_write, "an epoch trained while MLflow is down")
                server.start()
                assert sweep.wait(600) == 0, (tmp_path / "dmsweep.log").read_text()[-3000:]
            finally:
                end_session(sweep.pid)

            text = log.read_text()
            shown = epochs_in(log)
            assert sorted(shown) == list(range(1, EPOCHS + 1)), text

            # Every epoch's metrics in MLflow, once each, or named as lost in log and tag alike.
            run = client.get_run(run_id)
            expected = {(key, epoch) for key in EPOCH_METRICS for epoch in range(1, EPOCHS + 1)}
            expected |= {(key, EPOCHS) for key in SUMMARY_METRICS}
            history = {
                key: client.get_metric_history(run_id, key) for key in {k for k, _ in expected}
            }
            for key, points in history.items():
                steps = [m.step for m in points]
                assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {steps}"
            stored = {(key, m.step) for key, points in history.items() for m in points}
            missing = {f"{key}@epoch{epoch}" for key, epoch in expected - stored}
            tagged = run.data.tags.get("dmsweep.lost_metrics")
            lost_in_tag = set(tagged.split(", ")) if tagged else set()
            logged = LOST_LINE.findall(text)
            lost_in_log = set(logged[-1].split(", ")) if logged else set()
            assert missing == lost_in_tag == lost_in_log, (missing, lost_in_tag, lost_in_log)
            # The server was back within the trial's patience: here nothing may be lost at all.
            assert not missing, text

            # The values are the ones the trial trained to, epoch by epoch.
            tracked = {m.step: m.value for m in history["val_top1"]}
            for epoch, value in shown.items():
                assert math.isclose(tracked[epoch], value, rel_tol=1e-3, abs_tol=1e-6), (
                    epoch,
                    tracked[epoch],
                    value,
                )

            # The run is complete: closed, with its curve and checkpoint; the sweep too.
            assert run.info.status == "FINISHED"
            artifacts = {a.path for a in client.list_artifacts(run_id)}
            assert {"learning_curve.png", "checkpoint", "trial.yaml"} <= artifacts
            parent = client.get_run(run.data.tags["mlflow.parentRunId"])
            assert parent.info.status == "FINISHED"
            assert parent.data.metrics["trials_succeeded"] == 1
        finally:
            server.stop()


_SERVERS: dict[int, MlflowServer] = {}  # by port: Tune pickles its callbacks, not a process


class StopOnFirstResult(tune.Callback):
    """Stops the MLflow server when the sweep's first trial reports its first epoch."""

    def __init__(self, server: MlflowServer) -> None:
        _SERVERS[server.port] = server
        self.port = server.port

    def on_trial_result(self, iteration, trials, trial, result, **info):
        server = _SERVERS[self.port]
        if server.running:
            server.stop()


def test_a_sweep_runs_through_mlflow_outages_and_its_runs_are_sent_later(tmp_path, local_ray):
    from service.spec.reading import spec_from_dict
    from service.sweep.engine import run_sweep

    server = MlflowServer(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        # Down before the sweep: it runs untracked, and says what waits.
        spec = tiny_spec(
            "down-before",
            grid={"method": ["mixup"], "loss": ["mce"]},
            epochs=1,
            tracking_uri=server.url,
        )
        before = run_spec(spec, tmp_path / "before")
        assert before.exit_code == 0 and before.counts["succeeded"] == 1
        assert before.folder.read_state().tracking is None
        assert any("tracking_outbox" in p for p in before.tracking_problems)
        server.start()
        track = send_pending(before.folder)
        assert track is not None and not list(before.folder.tracking_outbox_dir.glob("*.json"))
        client, parent, children = mlflow_children(before.folder.path)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["trials_succeeded"] == 1
        [child] = children
        record = before.folder.records()[0]
        assert child.data.tags["dmsweep.trial_id"] == record.trial_id
        assert child.info.status == "FINISHED"
        assert child.data.metrics["val_top1"] == record.metrics["val_top1"]

        # Down from the first epoch on: trials start (untracked), end and are pruned without it.
        epochs, samples = 3, 3
        spec = tiny_spec(
            "down-during",
            grid={"method": ["mixup"], "loss": ["mce"]},
            epochs=epochs,
            **tpe_asha(samples),
            tracking_uri=server.url,
        )
        text = yaml.safe_dump(spec, sort_keys=False)
        during = run_sweep(
            spec_from_dict(spec),
            text,
            storage_path=tmp_path / "during",
            callbacks=[StopOnFirstResult(server)],
        )
        assert not server.running, "the server was never stopped"
        assert during.exit_code == 0, during.counts
        records = during.folder.records()
        assert len(records) == samples
        waiting = list(during.folder.tracking_outbox_dir.glob("*.json"))
        assert waiting, "nothing waited for MLflow"
        server.start()
        send_pending(during.folder)
        assert not list(during.folder.tracking_outbox_dir.glob("*.json"))
        client, parent, children = mlflow_children(during.folder.path)
        assert parent.info.status == "FINISHED"
        # Optuna's plot of the study waited with the report (one parameter: the history only).
        plots = "optuna/synthetic/smallnet/mixup/mce"
        shown = [a.path for a in client.list_artifacts(parent.info.run_id, plots)]
        assert shown == [f"{plots}/history.png"]
        by_trial = {c.data.tags["dmsweep.trial_id"]: c for c in children}
        assert sorted(by_trial) == sorted(r.trial_id for r in records)  # one run per trial
        for record in records:
            run = by_trial[record.trial_id]
            # ASHA may stop a trial while its last epoch's report is on its way: SweepCallback
            # then records it pruned and closes its run KILLED, and the trial's driver, ending
            # anyway, records it succeeded (a race of the callback, seen here, not fixed here).
            # Either way the run is closed.
            expected = {"KILLED"} if record.status == "pruned" else {"FINISHED", "KILLED"}
            assert run.info.status in expected, (record.status, run.info.status)
            last = int(record.metrics["epoch"])
            history = client.get_metric_history(run.info.run_id, "val_top1")
            if "dmsweep.backfilled" in run.data.tags:  # started while MLflow was down
                assert [m.step for m in history] == [last]
            elif record.status == "succeeded":  # every epoch, sent later
                assert sorted(m.step for m in history) == list(range(1, last + 1))
    finally:
        server.stop()
