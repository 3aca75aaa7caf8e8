"""Fixtures shared by the test modules: real data from the shared folder, the API in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.real_data import unpack_cifar10_jpg

if TYPE_CHECKING:
    from tests.support.api_server import Served


@pytest.fixture(scope="session")
def cifar10_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 JPEG ImageFolder (``train``: 50,000, ``test``: 10,000 images of 32 px).

    Unpacked once per test session into a pytest temporary folder; the path of ``cifar10-jpg``.
    """
    return unpack_cifar10_jpg(tmp_path_factory.mktemp("cifar10-jpg"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The sweep service on uvicorn in a thread, one per test module (its Ray port is closed)."""
    # Imported here: the app brings the whole service, which most test modules never need.
    from tests.support.api_server import Served

    served = Served(tmp_path_factory.mktemp("api"))
    served.start()
    yield served
    served.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``disturbs_shared_ray`` run after every other test, in their own order.

    They kill workers and fail trials mid-start on the session's shared Ray; in Ray 2.60 that
    can leave it unable to free the placement groups of trials Tune stops later (ASHA), so the
    tuning tests would wait forever if they came after.
    """
    last = [item for item in items if item.get_closest_marker("disturbs_shared_ray")]
    if last:
        items[:] = [item for item in items if item not in last] + last
