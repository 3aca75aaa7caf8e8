"""Helpers of the integration tests: tiny specs, the engine, what a sweep left in MLflow."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

# 4 logical CPUs on 2 cores: two 1-worker trials at once, each trial's driver on a slot.
RAY_CPUS = 4
TRIAL_SLOTS = 2


def tiny_spec(name: str, **changes: Any) -> dict[str, Any]:
    """A sweep of synthetic 16-pixel images and the small CNN: seconds per trial."""
    spec: dict[str, Any] = {
        "name": name,
        "grid": {
            "dataset": ["synthetic"],
            "backbone": ["smallnet"],
            "method": ["mixup", "cutmix"],
            "loss": ["mce", "dm_ce"],
            "seeds": [0],
        },
        "recipe": "smoke",
        "epochs": 2,
        "data": {
            "synthetic": {
                "num_classes": 4,
                "image_size": 16,
                "synthetic_images": {"train": 256, "test": 128},
            }
        },
        "eval": {"mixed_batch": 32},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def tpe_asha(samples: int) -> dict[str, Any]:
    """``tiny_spec`` settings of a TPE search over the learning rate with ASHA halving each epoch.

    The learning rate spreads the accuracies, so that ASHA's cut-offs separate trials, and there
    are enough images that the first epoch's accuracy already depends on it.
    """
    return {
        "search": {
            "parameters": {"lr": {"low": 1e-3, "high": 0.5, "log": True}},
            "sampler": "tpe",
            "num_samples": samples,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
        "data": {
            "synthetic": {
                "num_classes": 4,
                "image_size": 16,
                "synthetic_images": {"train": 512, "test": 128},
            }
        },
        "recipe_overrides": {"batch_size": 32},
    }


def synthetic_data(train_images: int) -> dict[str, Any]:
    """A spec's ``data``: synthetic 32-pixel images of 4 classes, 128 of them to test on."""
    return {
        "synthetic": {
            "num_classes": 4,
            "image_size": 32,
            "synthetic_images": {"train": train_images, "test": 128},
        }
    }


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_spec(spec: dict[str, Any], storage: Path):
    """Run a spec through the engine on the session's Ray; the outcome."""
    from service.spec.reading import spec_from_dict
    from service.sweep.engine import run_sweep

    text = yaml.safe_dump(spec, sort_keys=False)
    return run_sweep(spec_from_dict(spec), text, storage_path=storage)


def mlflow_children(folder: Path):
    """A sweep's MLflow client, parent run and child runs (one per trial), from its folder."""
    state = json.loads((folder / "sweep.json").read_text())["tracking"]
    client = MlflowClient(tracking_uri=state["uri"])
    runs = client.search_runs([state["experiment_id"]], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]]
    return client, client.get_run(state["parent_run_id"]), children


DMSWEEP = [sys.executable, "-m", "service.cli"]


def wait_for(condition, timeout_s: float, what: str, process=None):
    """``condition()``'s first truthy value, polled every 0.25 s; fails at the timeout or when
    ``process`` (a sweep's driver) ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {process.returncode}) before {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
