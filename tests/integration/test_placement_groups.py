"""Orphaned worker placement groups are given back (service/sweep/ray_workarounds.py), real Ray."""

from __future__ import annotations

import signal
import time

import pytest
import ray
from ray import tune
from ray._private.state import state
from ray.util import placement_group, placement_group_table, remove_placement_group

from service.sweep.ray_workarounds import (
    PlacementGroupReaper,
    _gcs_table,
    orphaned_placement_groups,
    release_orphaned_placement_groups,
)

pytestmark = pytest.mark.usefixtures("local_ray")


@ray.remote(num_cpus=0)
class Creator:
    """Stands for a Train controller: it reserves its workers' resources, then dies."""

    def reserve(self) -> str:
        group = placement_group([{"CPU": 0.5}])
        ray.get(group.ready(), timeout=60)
        return group.id.hex()


@ray.remote(num_cpus=0)
class LateCreator:
    """Stands for a Train controller that asks for a new worker group while being killed."""

    def __init__(self) -> None:
        signal.signal(signal.SIGTERM, self._reserve)

    def _reserve(self, *_: object) -> None:
        placement_group([{"CPU": 0.5}])
        time.sleep(0.1)  # the raylet sends SIGKILL 200 ms after SIGTERM

    def ready(self) -> bool:
        return True


@ray.remote(num_cpus=0)
class Owner:
    """Stands for a Tune trial: the controller it made dies with it."""

    def start(self) -> str:
        self.child = LateCreator.remote()
        ray.get(self.child.ready.remote())
        return self.child._actor_id.hex()


def groups_made_by(actor_id: str) -> list:
    return [row for row in _gcs_table() if ray.ActorID(row.creator_actor_id).hex() == actor_id]


def late_group() -> str | None:
    """A group registered by an actor GCS already had as dead; None if the race was missed.

    Ray tells an actor whose owner died to exit with SIGTERM or by a message of its own; only
    the SIGTERM path runs the actor's handler, so some tries make no group.
    """
    owner = Owner.remote()
    child = ray.get(owner.start.remote())
    ray.kill(owner)
    assert wait_for(lambda: state.actor_table(child).get("State") == "DEAD")
    time.sleep(1)  # a group asked for in the handler reaches GCS by now
    rows = groups_made_by(child)
    return rows[0].placement_group_id.hex() if rows else None


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


def test_a_group_asked_for_by_an_actor_being_killed_is_released():
    """The Ray 2.60 race that kept a stopped ASHA trial's CPUs (sweep/ray_workarounds.py)."""
    for _ in range(8):
        orphan = late_group()
        if orphan is not None:
            break
    assert orphan is not None, "the race never happened in 8 tries"
    # GCS never marks such a group's creator dead, so Ray keeps it for as long as the job lives.
    [row] = [r for r in _gcs_table() if r.placement_group_id.hex() == orphan]
    assert not row.creator_actor_dead
    assert state_of(orphan) == "CREATED"
    assert release_orphaned_placement_groups() == [orphan]
    assert wait_for(lambda: state_of(orphan) == "REMOVED")


def test_the_reaper_listens_to_hooks_tune_calls():
    hooks = [name for name in vars(PlacementGroupReaper) if name.startswith("on_")]
    assert hooks and all(callable(getattr(tune.Callback, name, None)) for name in hooks), hooks
