"""Fixtures shared by the test modules: real data from the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from real_data import unpack_cifar10_jpg


@pytest.fixture(scope="session")
def cifar10_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 JPEG ImageFolder (``train``: 50,000, ``test``: 10,000 images of 32 px).

    Unpacked once per test session into a pytest temporary folder; the path of ``cifar10-jpg``.
    """
    return unpack_cifar10_jpg(tmp_path_factory.mktemp("cifar10-jpg"))
