"""Orphaned worker placement groups are given back (service/placement_groups.py), on real Ray."""

from __future__ import annotations

import time

import pytest
import ray
from ray.util import placement_group, placement_group_table, remove_placement_group

from service.placement_groups import orphaned_placement_groups, release_orphaned_placement_groups

pytestmark = pytest.mark.usefixtures("local_ray")


@ray.remote(num_cpus=0)
class Creator:
    """Stands for a Train controller: it reserves its workers' resources, then dies."""

    def reserve(self) -> str:
        group = placement_group([{"CPU": 0.5}])
        ray.get(group.ready(), timeout=60)
        return group.id.hex()


def state_of(pg_id: str) -> str:
    return placement_group_table()[pg_id]["state"]


def wait_for(condition, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_dead_actors_group_is_held_until_released_and_live_ones_are_kept():
    dying, living = Creator.remote(), Creator.remote()
    orphan, kept = ray.get([dying.reserve.remote(), living.reserve.remote()])
    drivers = placement_group([{"CPU": 0.5}])  # made by the driver, as Tune's trial groups are
    ray.get(drivers.ready(), timeout=60)
    try:
        assert orphaned_placement_groups() == []
        ray.kill(dying)
        # Ray keeps the group of a dead actor for as long as its job lives: what leaks.
        assert wait_for(lambda: orphan in orphaned_placement_groups())
        assert state_of(orphan) == "CREATED"
        assert release_orphaned_placement_groups() == [orphan]
        assert wait_for(lambda: state_of(orphan) == "REMOVED")
        assert state_of(kept) == "CREATED"
        assert state_of(drivers.id.hex()) == "CREATED"
        assert release_orphaned_placement_groups() == []
    finally:
        ray.kill(living)
        remove_placement_group(drivers)
        wait_for(lambda: kept in orphaned_placement_groups(), timeout_s=10)
        release_orphaned_placement_groups()
