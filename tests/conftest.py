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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``disturbs_shared_ray`` run after every other test, in their own order.

    They kill workers and fail trials mid-start on the session's shared Ray; in Ray 2.60 that
    can leave it unable to free the placement groups of trials Tune stops later (ASHA), so the
    tuning tests would wait forever if they came after.
    """
    last = [item for item in items if item.get_closest_marker("disturbs_shared_ray")]
    if last:
        items[:] = [item for item in items if item not in last] + last
