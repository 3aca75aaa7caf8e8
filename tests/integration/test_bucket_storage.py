"""What dmsweep keeps in a bucket, against moto's S3 server: the sweep folder, checkpoints, the
MLflow outbox, and data sets read as Parquet shards straight from the bucket."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from services import s3_server

from service.results.folder import SweepFolder, find_sweep
from service.results.records import SweepInfo, SweepStatus
from service.spec.data_check import data_problems
from service.spec.reading import spec_from_dict
from service.storage.bucket_path import BucketPath
from service.sweep.worker import METRICS_FILE, TrialCheckpoints, append_log
from service.tracking.outbox import Outbox
from trainers.data import ParquetShards, open_dataset, write_parquet_shards
from trainers.data.synthetic import synthetic

BUCKET = "dmsweep"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """One S3 server for the module, its variables set for this process while it runs."""
    folder = tmp_path_factory.mktemp("s3")
    with s3_server(folder, buckets=[BUCKET]) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.env.items():
            patch.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def shards(s3, tmp_path_factory):
    """A tiny CIFAR-10 look-alike written as Parquet shards here and uploaded to the bucket:
    (the images, the local folder, the bucket prefix)."""
    images = synthetic(40, num_classes=10, image_size=8, seed=0)
    local = tmp_path_factory.mktemp("shards") / "cifar10"
    write_parquet_shards(images, local, images_per_shard=16, encoding="raw")
    write_parquet_shards(images, local, split="test", images_per_shard=16, encoding="png")
    root = BucketPath(f"s3://{BUCKET}/data/cifar10")
    root.upload(local)
    return images, local, root


def test_a_sweep_folder_on_a_bucket_keeps_its_files(s3):
    folder = SweepFolder(BucketPath(f"s3://{BUCKET}/runs/folder-1"))
    info = SweepInfo(sweep_id="folder-1", name="folder", status=SweepStatus.CREATED)
    folder.write_state(info)
    assert folder.update_state(status=SweepStatus.RUNNING).status == SweepStatus.RUNNING
    append_log(folder.log_file("t_00001"), "start")
    append_log(folder.log_file("t_00001"), "epoch 1: train_loss 1")
    assert folder.log_file("t_00001").read_text().count("\n") == 2
    assert folder.started_trials() == ["t_00001"]
    assert folder.read_record("t_00001") is None and folder.read_failure("t_00001") is None
    found = find_sweep("folder-1", f"s3://{BUCKET}/runs")
    assert found == folder and found.read_state().status == SweepStatus.RUNNING
    with pytest.raises(ValueError, match="no SQLite file"):
        _ = folder.optuna_url
    with pytest.raises(ValueError, match=r"no sweep 'nothing'.*folder-1"):
        find_sweep("nothing", f"s3://{BUCKET}/runs")


def test_the_outbox_on_a_bucket_keeps_writes_in_order(s3):
    outbox = Outbox(BucketPath(f"s3://{BUCKET}/runs/outbox-1/tracking_outbox"))
    outbox.add({"op": "metrics", "n": 1})
    outbox.add({"op": "metrics", "n": 2})
    assert [json.loads(p.read_text())["n"] for p in outbox.pending()] == [1, 2]
    outbox.pending()[0].unlink()
    assert [json.loads(p.read_text())["n"] for p in outbox.pending()] == [2]


def test_checkpoints_on_a_bucket_newest_whole_one_wins(s3, tmp_path):
    checkpoints = TrialCheckpoints(BucketPath(f"s3://{BUCKET}/runs/ckpt-1/train/t_00001"))
    assert checkpoints.newest() is None
    for epoch in (1, 2, 3):
        local = tmp_path / f"loop-{epoch}"
        local.mkdir()
        (local / "state.pt").write_bytes(bytes([epoch]) * 100)
        checkpoints.keep(str(local), {"epoch": epoch, "val_top1": 10.0 * epoch})
    names = [p.name for p in checkpoints.folder.iterdir()]
    assert names == ["checkpoint_000002", "checkpoint_000003"]  # the newest two kept
    # Epoch 4 cut off by a kill while uploading: its files are there, its metrics are not.
    (checkpoints.folder / "checkpoint_000004" / "state.pt").write_bytes(b"half")
    newest = checkpoints.newest()
    assert newest is not None and newest.name == "checkpoint_000003"
    assert TrialCheckpoints.metrics(newest)["epoch"] == 3
    with checkpoints.local(newest) as folder:
        assert (Path(folder) / "state.pt").read_bytes() == bytes([3]) * 100
        assert json.loads((Path(folder) / METRICS_FILE).read_text())["val_top1"] == 30.0
    assert not Path(folder).exists()  # the download is removed with the context
    assert checkpoints.finished() is None  # epoch 3 did not end the trial (no top1_best)
    local = tmp_path / "loop-5"
    local.mkdir()
    (local / "state.pt").write_bytes(b"5")
    checkpoints.keep(str(local), {"epoch": 5, "top1_best": 50.0})
    assert checkpoints.finished() == {"epoch": 5, "top1_best": 50.0}
    kept = [p.name for p in checkpoints.folder.iterdir()]
    assert kept == ["checkpoint_000003", "checkpoint_000005"]  # the cut-off one is gone


def test_parquet_shards_are_read_straight_from_the_bucket(shards):
    images, local, root = shards

    train = open_dataset("cifar10", "train", source="parquet", root=str(root))
    assert isinstance(train, ParquetShards) and len(train) == 40 and len(train.shards) == 3
    assert train.shards[0] == f"{root}/train-00000.parquet"
    index = torch.tensor([39, 0, 17, 5])
    assert torch.equal(train.read(index), images.read(index))
    assert torch.equal(train.labels, images.labels)
    # Sent to a worker process: the URIs travel, the file system is opened again there.
    again = pickle.loads(pickle.dumps(train))
    assert torch.equal(again.read(index), images.read(index))
    # An encoded split is read a row group at a time (pyarrow's ParquetFile on the bucket).
    test = ParquetShards(str(root), "test")
    assert test.open_image(21).size == (8, 8)
    assert torch.equal(test.read(index), ParquetShards(local, "test").read(index))

    with pytest.raises(FileNotFoundError, match=r"no Parquet shards val-NNNNN.*test, train"):
        ParquetShards(str(root), "val")


def test_a_bucket_data_root_is_checked_before_a_sweep(shards):
    def problems(source: str, root: str) -> list[str]:
        spec = spec_from_dict(
            {
                "name": "bucket-data",
                "grid": {
                    "dataset": ["cifar10"],
                    "backbone": ["smallnet"],
                    "method": ["mixup"],
                    "loss": ["mce"],
                    "seeds": [0],
                },
                "data": {"cifar10": {"source": source, "root": root}},
            }
        )
        return [p.message for p in data_problems(spec)]

    assert problems("parquet", f"s3://{BUCKET}/data/cifar10") == []
    assert "holds nothing" in problems("parquet", f"s3://{BUCKET}/data/missing")[0]
    assert "Parquet shards only" in problems("cifar", f"s3://{BUCKET}/data/cifar10")[0]


def test_the_service_keeps_its_sweeps_in_a_bucket(shards, tmp_path):
    """A service whose storage and data roots are bucket prefixes: the spec is stored in the
    bucket and the Ray job runs it from there; a data root outside the bucket root is refused.
    Ray's job server is the project's stand-in (tests/support/fake_ray.py): nothing runs."""
    import httpx

    from tests.support.api_server import AUTH, YAML, Served
    from tests.support.fake_ray import fake_job_server

    def spec(root: str) -> str:
        grid = {"dataset": ["cifar10"], "backbone": ["smallnet"], "method": ["mixup"]}
        grid |= {"loss": ["mce"], "seeds": [0]}
        body = {"name": "bucket-api", "grid": grid, "recipe": "smoke", "epochs": 1}
        return json.dumps({**body, "data": {"cifar10": {"source": "parquet", "root": root}}})

    storage = BucketPath(f"s3://{BUCKET}/service/sweeps")
    with fake_job_server() as fake:
        served = Served(
            tmp_path,
            ray_address=fake.url,
            storage_root=storage,
            data_roots=(BucketPath(f"s3://{BUCKET}/data"),),
            mlflow_uri="http://127.0.0.1:9",  # never asked while a sweep is submitted
        )
        served.start()
        try:
            with httpx.Client(base_url=served.url, headers=AUTH, timeout=60) as client:
                outside = client.post(
                    "/sweeps", content=spec(f"s3://{BUCKET}/other/cifar10"), headers=YAML
                )
                assert outside.status_code == 422, outside.text
                assert f"s3://{BUCKET}/data" in outside.text
                accepted = client.post("/sweeps", content=spec("cifar10"), headers=YAML)
                assert accepted.status_code == 201, accepted.text
        finally:
            served.stop()
    sweep_id = accepted.json()["id"]
    stored = storage / ".specs" / f"{sweep_id}.yaml"
    assert f"root: s3://{BUCKET}/data/cifar10" in stored.read_text()
    [job] = fake.submitted(sweep_id)
    assert f"run {stored} --sweep-id {sweep_id} --storage-path {storage}" in job["entrypoint"]
    assert [p.name for p in (storage / ".specs").iterdir()] == [f"{sweep_id}.yaml"]  # no draft
