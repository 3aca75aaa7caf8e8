"""Bad input that needs a cluster or shows only when data is read, on the session's real Ray.

More GPUs per trial than the cluster has: refused up front by the CLI and the API, nothing
created. An unreadable image or a CIFAR pickle of the wrong shape: that trial fails with an
error naming the file, and the other trials of the sweep go on.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from service.cli import app
from service.results.folder import find_sweep
from tests.support.api_server import YAML, Served
from tests.support.bad_inputs import changed, flat

pytestmark = pytest.mark.disturbs_shared_ray


def dashboard_url() -> str:
    import ray

    return "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]


def ray_token() -> str | None:
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() if default.is_file() else None


def test_more_gpus_than_the_cluster_has_is_refused_up_front(local_ray, tmp_path):
    text = changed((("resources",), {"gpus_per_worker": 1}))
    spec = tmp_path / "gpu.yaml"
    spec.write_text(text)
    storage = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(spec), "--storage-path", str(storage)])
    assert result.exit_code == 2, result.output
    assert "a trial asks for 1 GPUs (1 workers x 1), the cluster has 0" in flat(result.output)
    assert not storage.exists() or not any(storage.iterdir())

    served = Served(tmp_path / "api", ray_address=dashboard_url(), ray_token=ray_token())
    served.start()
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            response = client.post("/sweeps", content=text.encode(), headers=YAML)
        assert response.status_code == 422, response.text
        (problem,) = response.json()["detail"]
        assert problem["loc"] == "resources"
        assert "the cluster has 0" in problem["msg"]
        assert served.created() == set()
    finally:
        served.stop()


def write_bad_pickles(root: Path) -> Path:
    """CIFAR-10 pickles whose third training batch has rows of 1024 values, not 3072."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(10)]
    with (folder / "batches.meta").open("wb") as out:
        pickle.dump({b"label_names": names}, out, protocol=2)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        width = 1024 if i == 3 else 3072
        batch = {
            b"data": rng.integers(0, 256, (10, width), dtype=np.uint8),
            b"labels": [*range(10)],
        }
        with (folder / f"data_batch_{i}").open("wb") as out:
            pickle.dump(batch, out, protocol=2)
    with (folder / "test_batch").open("wb") as out:
        test = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": [*range(10)]}
        pickle.dump(test, out, protocol=2)
    return folder / "data_batch_3"


def write_folder_with_a_bad_image(root: Path) -> Path:
    """An ImageFolder (train / test, two classes) with one file that is not an image."""
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (60 * i, 40, 200)).save(folder / f"{i}.png")
    bad = root / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    return bad


def test_unreadable_data_fails_that_trial_naming_the_file_and_the_sweep_goes_on(
    local_ray, tmp_path
):
    bad_pickle = write_bad_pickles(tmp_path / "cifar10")
    bad_image = write_folder_with_a_bad_image(tmp_path / "folder")
    spec = yaml.safe_load(changed())
    spec["name"] = "bad-data"
    spec["grid"]["dataset"] = ["synthetic", "cifar10", "cifar100"]
    spec["data"] = {
        "synthetic": {"synthetic_images": {"train": 64, "val": 32, "test": 32}},
        "cifar10": {"root": str(tmp_path / "cifar10")},
        "cifar100": {"source": "imagefolder", "root": str(tmp_path / "folder")},
    }
    spec["batch_size"] = 16
    spec_file = tmp_path / "bad-data.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(spec_file), "--storage-path", str(storage)])
    assert result.exit_code == 1, result.output  # 1: some trials failed, the sweep finished
    records = {r.dataset: r.to_row() for r in find_sweep(*_only(storage)).records()}
    assert set(records) == {"synthetic", "cifar10", "cifar100"}
    assert records["synthetic"]["status"] == "succeeded"
    assert records["cifar10"]["status"] == "failed"
    assert str(bad_pickle) in records["cifar10"]["error"]
    assert "'data' has shape (10, 1024), expected (N, 3072)" in records["cifar10"]["error"]
    assert records["cifar100"]["status"] == "failed"
    assert f"cannot decode image {bad_image}" in records["cifar100"]["error"]
    output = flat(result.output)
    assert "1 succeeded" in output and "2 failed" in output


def _only(storage: Path) -> tuple[str, Path]:
    (folder,) = [p for p in storage.iterdir() if (p / "sweep.json").is_file()]
    return folder.name, storage
