"""Code, packages and hardware of a process, as MLflow tags of every run."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from trainers.machine import cpu_model

PACKAGES = ("dmsweep", "torch", "torchvision", "timm", "ray", "optuna", "mlflow", "pyarrow")


@functools.cache
def git_commit() -> str:
    """The commit of the dmsweep checkout (``+dirty`` with local changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, str]:
    """Code, packages and hardware of this process, as MLflow tags."""
    import torch  # the driver of a sweep may run without it loaded; a worker always has it

    tags = {"git_commit": git_commit(), "python": platform.python_version()}
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "not installed"
    tags["host"] = platform.node()
    tags["cpu"] = cpu_model()
    tags["cpu_count"] = str(os.cpu_count())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tags["gpu_count"] = str(gpus)
    tags["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)) or "none"
    return {f"dmsweep.{k}" if k != "git_commit" else "git_commit": v for k, v in tags.items()}
