"""Workarounds of Ray's bugs, each naming the Ray version it was seen with; nothing else.

Both concern Ray Train V2 (Ray 2.60) freeing the placement group of a trial that Tune stopped
(ASHA, a lost driver): without them the stopped trial keeps its CPUs and GPUs, and the sweep's
later trials wait for them forever. The tests in ``tests/integration/test_placement_groups.py``
reproduce each; a Ray upgrade that fixes them upstream makes both no-ops, and then this module
can go (``pyproject.toml`` bounds Ray below 2.61 while it depends on Ray's internals).

1. ``state_api_env``. Ray Train frees the group from a detached ``PlacementGroupCleaner`` actor
   that asks the State API whether the trial's Train controller is alive. That client finds "the"
   cluster on its own: ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``, else the only GCS
   process on the machine. With a second Ray on the machine (another user's, a ``ray start``
   cluster, a test's) it raises "Found multiple active Ray instances", the cleaner's thread dies,
   and the group is held until Ray ends. So the workers are told where their own cluster is.

2. ``PlacementGroupReaper``. A Ray Train V2 run reserves its workers' CPUs and GPUs in a
   placement group made by its controller actor. A placement group lives until its creator job
   *and* creator actor are both dead, so when Tune stops a trial (ASHA, a lost driver) and the
   controller dies with it, the group is held until the sweep's own driver ends. Ray Train frees
   it from a detached ``PlacementGroupCleaner`` in the common case, but not when the controller,
   already told to exit, restarts its worker group while it drains (Ray 2.60, seen under load:
   the dying trial's workers die first, the controller retries, and its new group is registered
   after GCS has already marked the controller dead): that group has no cleaner and is never
   marked orphaned by GCS, so the sweep's later trials could wait for its resources forever.

   ``release_orphaned_placement_groups`` removes every group of this job whose creator actor is
   dead: nobody can use such a group any more. It reads GCS's tables through Ray's private
   accessors, because the public ``placement_group_table`` leaves out the creator; if they move, it
   warns and does nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import tune

log = logging.getLogger(__name__)

HOLDING = frozenset({"PENDING", "CREATED", "RESCHEDULING"})
CHECK_EVERY_S = 2.0
END_WAIT_S = 20.0


def state_api_env(
    *, dashboard_port: int | None = None, gcs_address: str | None = None
) -> dict[str, str]:
    """Environment for a sweep's workers naming their own cluster's State API (workaround 1).

    ``dashboard_port``: a local Ray's dashboard on 127.0.0.1; ``gcs_address``: a cluster's GCS
    (``host:port``), from which the State API client reads the dashboard's URL. Ray 2.60.
    """
    if dashboard_port is not None:
        return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
    return {"RAY_ADDRESS": gcs_address} if gcs_address else {}


def _gcs_table() -> list[Any] | None:
    """Every placement group as ``PlacementGroupTableData``; None where Ray's internals moved."""
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        rows = state._connect_and_get_accessor().get_placement_group_table()
        # Generated protobuf modules ship no type stubs of their messages (Ray 2.60).
        table = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]
        return [table.FromString(row) for row in rows]
    except (ImportError, AttributeError) as error:
        log.warning("cannot read Ray's placement group table (%s); orphans are not released", error)
        return None


def _actor_is_dead(actor_id: bytes) -> bool:
    """Whether GCS has the actor as DEAD (or has forgotten it, as it does dead ones in time)."""
    from ray._private.state import state

    info = state.actor_table(ray.ActorID(actor_id).hex())
    return not info or info.get("State") == "DEAD"


def _actors_groups() -> dict[str, bool]:
    """Groups of this job that hold resources for an actor: id (hex) -> whether it is dead."""
    table = _gcs_table()
    if table is None:
        return {}
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData  # type: ignore[attr-defined]

    holding = {PlacementGroupTableData.PlacementGroupState.Value(name) for name in HOLDING}
    job = ray.get_runtime_context().get_job_id()
    return {
        row.placement_group_id.hex(): (
            # GCS marks a group's creator dead when the actor dies; a group the actor asked
            # for while it was being killed is registered after that, and is never marked.
            row.creator_actor_dead or _actor_is_dead(row.creator_actor_id)
        )
        for row in table
        if row.creator_job_id.hex() == job
        and row.state in holding
        and not row.is_detached
        # Tune's own trial groups are made by the driver: their creator actor is nil.
        and not ray.ActorID(row.creator_actor_id).is_nil()
    }


def orphaned_placement_groups() -> list[str]:
    """Ids (hex) of this job's placement groups that hold resources for a dead creator actor."""
    return [pg_id for pg_id, dead in _actors_groups().items() if dead]


def remove_placement_group_by_id(pg_id: str) -> None:
    """``ray.util.remove_placement_group`` for a group known by its hex id."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def _release(pg_ids: list[str]) -> list[str]:
    released = []
    for pg_id in pg_ids:
        try:
            remove_placement_group_by_id(pg_id)
        except Exception as error:  # removed meanwhile by Ray's own cleaner
            log.debug("placement group %s not removed: %s", pg_id, error)
            continue
        log.info("released placement group %s: its Train controller is dead", pg_id)
        released.append(pg_id)
    return released


def release_orphaned_placement_groups() -> list[str]:
    """Remove this job's placement groups whose creator actor is dead; their ids."""
    return _release(orphaned_placement_groups())


class PlacementGroupReaper(tune.Callback):
    """A Tune callback of the sweep's driver: releases orphaned groups as the sweep goes on.

    At the end it waits up to ``end_wait_s`` for the controllers of the last stopped trials
    to die, and releases their groups too: a stop can be Tune's last act before ``fit``
    returns, and a driver that goes on (a notebook, a test session) would keep them.
    """

    def __init__(self, every_s: float = CHECK_EVERY_S, end_wait_s: float = END_WAIT_S) -> None:
        self.every_s = every_s
        self.end_wait_s = end_wait_s
        self._next = 0.0
        self.released: list[str] = []

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """After each turn of Tune's loop, at most every ``every_s`` seconds."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            self.released += release_orphaned_placement_groups()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Until no trial's controller holds a group, or ``end_wait_s`` has passed."""
        deadline = time.monotonic() + self.end_wait_s
        while True:
            groups = _actors_groups()
            self.released += _release([pg_id for pg_id, dead in groups.items() if dead])
            alive = [pg_id for pg_id, dead in groups.items() if not dead]
            if not alive:
                return
            if time.monotonic() > deadline:
                log.warning("placement groups still held by live actors: %s", alive)
                return
            time.sleep(0.5)
