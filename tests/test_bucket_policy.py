"""The service's roots may be bucket prefixes: what a spec may name under them, and what not.

No server is needed: a ``BucketPath`` touches its bucket only when read or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.server.settings import ServiceSettings, SettingsError
from service.spec.path_policy import path_problems, resolve_paths
from service.spec.reading import spec_from_dict
from service.storage.bucket_path import BucketPath
from service.storage.paths import as_path

DATA = BucketPath("s3://data/sets")
STORAGE = BucketPath("s3://sweeps/runs")


def spec(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "policy",
        "grid": {
            "dataset": ["cifar10"],
            "backbone": ["smallnet"],
            "method": ["mixup"],
            "loss": ["mce"],
            "seeds": [0],
        },
        "data": {"cifar10": {"source": "parquet", "root": "s3://data/sets/cifar10"}},
    }
    raw.update(changes)
    return raw


def problems(raw: dict[str, Any], data_roots=(DATA,), storage_root=STORAGE) -> dict[str, str]:
    found = path_problems(
        spec_from_dict(raw), data_roots=data_roots, storage_root=storage_root, tracking_uri=None
    )
    return {".".join(map(str, p.location)): p.message for p in found}


def with_root(root: str) -> dict[str, Any]:
    return spec(data={"cifar10": {"source": "parquet", "root": root}})


def test_locations_under_the_bucket_roots_are_allowed() -> None:
    assert problems(spec()) == {}
    assert problems(with_root("s3://data/sets")) == {}  # the root itself
    assert problems(with_root("cifar10")) == {}  # relative: under the first root
    assert problems(spec(storage_path="s3://sweeps/runs/team-a")) == {}
    assert problems(spec(storage_path="s3://sweeps/runs")) == {}


@pytest.mark.parametrize(
    ("root", "words"),
    [
        ("s3://data/setsX/cifar10", "must lie under"),  # a key prefix that cuts a segment
        ("s3://data2/sets/cifar10", "must lie under"),  # another bucket
        ("s3://data", "must lie under"),  # above the root
        ("s3://data/sets/../private", "'..'"),
        ("s3://data/sets//cifar10", "empty"),
        ("gs://data/sets/cifar10", "not another URI"),
        ("/etc", "must lie under"),  # a local path, with bucket roots only
        ("cifar10/../../x", "'..'"),
    ],
)
def test_locations_outside_the_bucket_roots_are_refused(root: str, words: str) -> None:
    found = problems(with_root(root))
    assert list(found) == ["data.cifar10.root"]
    assert words in found["data.cifar10.root"]
    assert root in found["data.cifar10.root"]


def test_a_bucket_is_refused_where_only_folders_are_roots(tmp_path: Path) -> None:
    found = problems(spec(), data_roots=(tmp_path,), storage_root=tmp_path)
    assert "not a URI" in found["data.cifar10.root"]
    found = problems(spec(storage_path="s3://sweeps/runs"), storage_root=tmp_path)
    assert "DMSWEEP_STORAGE_ROOT" in found["storage_path"]


def test_storage_path_must_lie_under_a_bucket_storage_root() -> None:
    found = problems(spec(storage_path="s3://sweeps/other"))
    assert "storage_path" in found and "s3://sweeps/runs" in found["storage_path"]


def test_weights_are_local_files_only(tmp_path: Path) -> None:
    backbones = {"smallnet": {"weights": "s3://data/sets/w.pt"}}
    found = problems(spec(backbones=backbones), data_roots=(DATA, tmp_path))
    assert "backbones.smallnet.weights" in found
    assert "not another URI" in found["backbones.smallnet.weights"]


def test_resolved_paths_keep_bucket_uris_and_default_under_the_first_root() -> None:
    raw = spec(data={"cifar10": {"source": "parquet"}})
    resolved = resolve_paths(raw, spec_from_dict(raw), data_roots=(DATA,), storage_root=STORAGE)
    assert resolved["data"]["cifar10"]["root"] == "s3://data/sets/cifar10"
    raw = with_root("part/cifar10")
    resolved = resolve_paths(raw, spec_from_dict(raw), data_roots=(DATA,), storage_root=STORAGE)
    assert resolved["data"]["cifar10"]["root"] == "s3://data/sets/part/cifar10"


def test_settings_read_bucket_roots(tmp_path: Path) -> None:
    env = {
        "DMSWEEP_STORAGE_ROOT": "s3://sweeps/runs/",
        "DMSWEEP_DATA_ROOTS": f"s3://data/sets:{tmp_path}:s3://more",
        "DMSWEEP_DATABASE_URL": "postgresql+psycopg2://u:p@db/dmsweep",
        "DMSWEEP_MLFLOW_URI": "http://mlflow:5000",
    }
    settings = ServiceSettings.from_env(env)
    assert settings.storage_root == STORAGE
    assert settings.data_roots == (DATA, tmp_path.resolve(), BucketPath("s3://more"))


def test_a_bucket_storage_root_needs_a_database_and_a_tracking_server() -> None:
    with pytest.raises(SettingsError) as refused:
        ServiceSettings.from_env({"DMSWEEP_STORAGE_ROOT": "s3://sweeps/runs"})
    assert "DMSWEEP_DATABASE_URL and DMSWEEP_MLFLOW_URI" in str(refused.value)
    with pytest.raises(SettingsError) as refused:
        ServiceSettings.from_env({"DMSWEEP_DATA_ROOTS": "s3://data/a/../b"})
    assert "DMSWEEP_DATA_ROOTS" in str(refused.value) and "'..'" in str(refused.value)


def test_bucket_paths_join_and_name_like_paths() -> None:
    folder = as_path("s3://sweeps/runs/") / "smoke-1"
    assert isinstance(folder, BucketPath) and str(folder) == "s3://sweeps/runs/smoke-1"
    record = folder / "trials" / "a_00001.json"
    assert (record.name, record.stem, str(record.parent.parent)) == (
        "a_00001.json",
        "a_00001",
        str(folder),
    )
    assert folder.fs_path == "sweeps/runs/smoke-1"
    assert as_path("runs") == Path("runs")
