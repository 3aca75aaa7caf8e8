"""The real data the tests need: the shared CIFAR-10 JPEG archive, unpacked, or a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest


def shared_dir() -> Path:
    """The shared folder beside the repository, or ``$DMSWEEP_SHARED`` for other layouts."""
    override = os.environ.get("DMSWEEP_SHARED")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared"


def unpack_cifar10_jpg(target: Path) -> Path:
    """Unpack ``data/cifar10-jpg.tar.gz`` of the shared folder into ``target``; its folder.

    Fails the test (never skips) when the archive is missing: the data tests are worth nothing
    without real images.
    """
    archive = shared_dir() / "data" / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.fail(
            f"real test data {archive} is missing: the tests need the shared data folder beside "
            "the repository, or DMSWEEP_SHARED pointing at a folder holding data/cifar10-jpg.tar.gz"
        )
    tar = shutil.which("tar")
    if tar:
        # GNU tar unpacks the 60,000 files in ~1-2 s where Python's tarfile takes ~9 s.
        command = [tar, "-xzf", str(archive), "-C", str(target), "--no-same-owner"]
        subprocess.run(command, check=True)
    else:
        with tarfile.open(archive) as packed:
            # The "data" filter (Python >= 3.10.12 / 3.11.4) refuses links and paths leaving target.
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            packed.extractall(target, **options)
    folder = target / "cifar10-jpg"
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        pytest.fail(f"{archive} did not unpack to cifar10-jpg/train and cifar10-jpg/test")
    return folder
