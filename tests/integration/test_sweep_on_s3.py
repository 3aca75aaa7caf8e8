"""A sweep on object storage: its folder, checkpoints, Tune state and MLflow artifacts in a bucket.

Real servers, each a process of its own: moto's S3 server, an MLflow server whose artifacts go to
the bucket (``--artifacts-destination s3://...``), a Ray head (``ray start``), and ``dmsweep run``
/ ``dmsweep resume`` on that head with ``--storage-path s3://...``, whose trials read their data
as Parquet shards from the bucket. The driver is SIGKILLed mid-sweep and the sweep resumed by a
new driver from the bucket alone (no local folder holds any of it); the head outlives the
driver, as a cluster's does. What landed is read back with boto3 and MLflow's REST API, not
through dmsweep.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
import urllib.request
from pathlib import Path

from services import mlflow_server, ray_auth_env, ray_head, s3_server
from sweep_helpers import DMSWEEP, tiny_spec, wait_for, write_spec

from service.results.folder import find_sweep
from tests.support.processes import end_session, kill_session, start_session
from trainers.data import write_parquet_shards
from trainers.data.synthetic import synthetic

BUCKET = "dmsweep"
ROOT = f"s3://{BUCKET}/runs"
EPOCHS = 4  # killed in epoch 3 or 4: two epochs' time to see it between checkpoints
DATA_ROOT = f"s3://{BUCKET}/data/cifar10"
TRAIN_IMAGES = 1024  # epochs of ~1.5 s on 2 cores


class Bucket:
    """The sweep's objects as boto3 sees them."""

    def __init__(self, s3) -> None:
        self.s3 = s3
        self.client = s3.client()

    def sweep_prefix(self) -> str | None:
        found = [k for k in self.s3.keys(BUCKET, "runs/") if k.endswith("/sweep.json")]
        return found[0].removesuffix("sweep.json") if found else None

    def text(self, key: str) -> str:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()

    def files(self, prefix: str, suffix: str) -> dict[str, str]:
        """``{name without suffix: text}`` of the objects directly under ``prefix``."""
        return {
            key[len(prefix) : -len(suffix)]: self.text(key)
            for key in self.s3.keys(BUCKET, prefix)
            if key.endswith(suffix) and "/" not in key[len(prefix) :]
        }


def mid_training(bucket: Bucket, prefix: str) -> str | None:
    """A trial past its epoch 2 and not finished: epoch 1's checkpoint is kept (before epoch
    2's line), and two epochs are left to kill it in."""
    done = bucket.files(prefix + "trials/", ".json")
    for trial, log in bucket.files(prefix + "logs/", ".log").items():
        if trial not in done and "epoch 2:" in log and "finished" not in log:
            return trial
    return None


def upload_parquet_data(s3, folder: Path) -> None:
    """A tiny CIFAR-10 look-alike as Parquet shards in the bucket (two train shards)."""
    for split, count in (("train", TRAIN_IMAGES), ("test", 128)):
        images = synthetic(count, split=split, num_classes=10, image_size=32, seed=0)
        write_parquet_shards(images, folder, split=split, images_per_shard=512)
    for shard in sorted(folder.iterdir()):
        s3.client().upload_file(str(shard), BUCKET, f"data/cifar10/{shard.name}")


def aws_variables(s3) -> dict[str, str]:
    """What dmsweep's processes and Ray's get: the standard AWS variables only (MLflow proxies
    the artifacts)."""
    return {k: v for k, v in s3.env.items() if k.startswith("AWS_")}


def mlflow_get(url: str, endpoint: str, **query) -> bytes:
    with urllib.request.urlopen(f"{url}{endpoint}?{urllib.parse.urlencode(query)}") as response:
        return response.read()


def test_a_sweep_on_s3_is_killed_resumed_and_readable(tmp_path, monkeypatch):
    ray_token = secrets.token_hex(16)
    with (
        s3_server(tmp_path, buckets=[BUCKET]) as s3,
        # The trials, Ray's workers, read the bucket with the head's AWS variables; 2 CPUs and a
        # trial slot, as the local Ray of `dmsweep run` on this machine has. It starts while
        # MLflow does.
        ray_head(
            tmp_path,
            num_cpus=2,
            resources={"trial_slot": 1},
            auth_token=ray_token,
            env=aws_variables(s3),
            wait=False,
        ) as head,
        mlflow_server(
            tmp_path,
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifacts=f"s3://{BUCKET}/mlflow",
            env=s3.env,
        ) as mlflow,
    ):
        aws = aws_variables(s3)
        env = {**aws, **ray_auth_env(ray_token)}
        bucket = Bucket(s3)
        upload_parquet_data(s3, tmp_path / "cifar10")
        spec = tiny_spec(
            "s3resume",
            epochs=EPOCHS,
            grid={"dataset": ["cifar10"], "method": ["mixup"], "loss": ["mce", "dm_ce"]},
            resources={"max_concurrent_trials": 1},
        )
        # The trials read their data straight from the bucket.
        spec["data"] = {"cifar10": {"source": "parquet", "root": DATA_ROOT}}
        spec_file = write_spec(tmp_path, spec)
        run = [*DMSWEEP, "run", str(spec_file), "--storage-path", ROOT, "--address", head.address]
        head.wait_ready()
        first = start_session([*run, "--tracking-uri", mlflow.url], tmp_path / "run.log", env=env)
        try:
            prefix = wait_for(bucket.sweep_prefix, 120, "the sweep in the bucket", first)
            wait_for(lambda: bucket.files(prefix + "trials/", ".json"), 300, "a record", first)
            interrupted = wait_for(
                lambda: mid_training(bucket, prefix), 300, "a trial mid-training", first
            )
            before = bucket.files(prefix + "trials/", ".json")
            first.kill()  # SIGKILL: no clean-up in the driver at all
            first.wait()
        finally:
            kill_session(first.pid)
        assert interrupted not in before and len(before) == 1, (tmp_path / "run.log").read_text()
        # The Tune state and the interrupted trial's checkpoint are in the bucket, nowhere else.
        keys = s3.keys(BUCKET, prefix)
        assert any(re.search(r"/experiment_state-.*\.json$", k) for k in keys), keys
        trial_folder = re.escape(f"{prefix}train/{interrupted}/")
        checkpoint = re.compile(rf"{trial_folder}checkpoint_\d{{6}}/metrics\.json")
        assert any(checkpoint.fullmatch(k) for k in keys), keys

        sweep_uri = f"s3://{BUCKET}/{prefix.rstrip('/')}"
        resume = [*DMSWEEP, "resume", sweep_uri, "--address", head.address]
        second = start_session(resume, tmp_path / "resume.log", env=env)
        try:
            rc = second.wait(timeout=300)
        finally:
            end_session(second.pid)
        output = (tmp_path / "resume.log").read_text()
        assert rc == 0, output

        # Every trial succeeded; the one finished before the kill neither ran nor was recorded
        # again; the interrupted one went on from its checkpoint in the bucket.
        after = bucket.files(prefix + "trials/", ".json")
        assert sorted(json.loads(r)["status"] for r in after.values()) == ["succeeded"] * 2
        logs = bucket.files(prefix + "logs/", ".log")
        for trial, record in before.items():
            assert after[trial] == record
            assert logs[trial].count("finished") == 1
        resumed = logs[interrupted].split("resume from", 1)
        assert len(resumed) == 2, logs[interrupted]
        assert resumed[1].startswith(f" {sweep_uri}/train/{interrupted}/checkpoint_"), resumed[1]
        epochs_after = [int(e) for e in re.findall(r"epoch (\d+):", resumed[1])]
        assert epochs_after[0] > 1 and epochs_after[-1] == EPOCHS, logs[interrupted]

        # The report is in the bucket, and dmsweep finds the sweep there by its id (as
        # `dmsweep report ID --storage-path s3://...` does, without its process's start-up).
        state = json.loads(bucket.text(prefix + "sweep.json"))
        assert state["status"] == "succeeded"
        assert "mixup" in bucket.text(prefix + "report.md")
        for name, value in aws.items():
            monkeypatch.setenv(name, value)
        found = find_sweep(state["sweep_id"], ROOT)
        assert str(found.path) == sweep_uri
        assert sorted(r.trial_id for r in found.records()) == sorted(after)
        assert found.progress("val_top1").done == 2

        # MLflow: the parent run's report and each trial's checkpoint are artifacts in the
        # bucket, served by MLflow's REST API.
        run_id = state["tracking"]["parent_run_id"]
        listed = json.loads(mlflow_get(mlflow.url, "/api/2.0/mlflow/artifacts/list", run_id=run_id))
        assert "spec.yaml" in {f["path"] for f in listed["files"]}
        report = json.loads(
            mlflow_get(mlflow.url, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="report")
        )
        assert {f["path"] for f in report["files"]} >= {"report/report.md", "report/gains.png"}
        page = mlflow_get(mlflow.url, "/get-artifact", run_id=run_id, path="report/report.md")
        assert page.decode() == bucket.text(prefix + "report.md")
        stored = s3.keys(BUCKET, "mlflow/")
        assert any(k.endswith(f"/{run_id}/artifacts/report/report.md") for k in stored), stored
        assert sum(k.endswith("/artifacts/checkpoint/state.pt") for k in stored) == 2, stored
