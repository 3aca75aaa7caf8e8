"""The real data the tests read from the shared folder: the CIFAR-10 JPEG archive, the paper's text.

A missing file fails the test (never skips): the data tests are worth nothing without real
images, nor the transcription tests without the paper.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import NoReturn

from tests.support import REPO


def shared_dir() -> Path:
    """The shared folder beside the repository, or ``$DMSWEEP_SHARED`` for other layouts."""
    override = os.environ.get("DMSWEEP_SHARED")
    return Path(override) if override else REPO.parent / "shared"


def cifar10_archive() -> Path:
    """``data/cifar10-jpg.tar.gz`` of the shared folder (it may be missing)."""
    return shared_dir() / "data" / "cifar10-jpg.tar.gz"


def _fail(message: str) -> NoReturn:
    import pytest  # here, not at the top: bench/ imports this module without the dev extras

    pytest.fail(message)


def unpack_cifar10_jpg(target: Path) -> Path:
    """Unpack the shared CIFAR-10 JPEG archive into ``target``; its ``cifar10-jpg`` folder."""
    archive = cifar10_archive()
    if not archive.is_file():
        _fail(
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
        _fail(f"{archive} did not unpack to cifar10-jpg/train and cifar10-jpg/test")
    return folder


def paper_lines() -> list[str]:
    """The lines of the paper's extracted text, ``paper/decoupled-mixup.txt``."""
    paper = shared_dir() / "paper" / "decoupled-mixup.txt"
    if not paper.is_file():
        _fail(
            f"the paper's text {paper} is missing: these tests need the shared folder beside the "
            "repository, or DMSWEEP_SHARED pointing at one holding paper/decoupled-mixup.txt"
        )
    return paper.read_text(encoding="utf-8").splitlines()
