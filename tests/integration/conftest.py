"""Real Ray, real MLflow: one local Ray and one smoke sweep shared by the tests that can."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sweep_helpers import RAY_CPUS, TRIAL_SLOTS, run_spec, tiny_spec


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the session, ended by this fixture (never `ray stop`)."""
    import ray

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    ray.init(
        num_cpus=RAY_CPUS,
        resources={"trial_slot": TRIAL_SLOTS},
        include_dashboard=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}},
    )
    yield
    ray.shutdown()


def _release_placement_groups() -> int:
    """Remove the placement groups still held in the shared Ray; how many there were."""
    from ray._raylet import PlacementGroupID
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    held = [
        pg_id
        for pg_id, entry in placement_group_table().items()
        if entry["state"] in ("CREATED", "PENDING", "RESCHEDULING")
    ]
    for pg_id in held:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
    return len(held)


@pytest.fixture(autouse=True)
def _shared_ray_left_clean(request):
    """Between tests, nothing may hold the shared Ray's CPUs or trial slots.

    A trial killed or failed mid-start (the fault and bad-data tests) can leave its worker's
    placement group behind in Ray 2.60, and the next test's trials then wait for CPUs forever.
    No test runs anything on the shared Ray after it ends, so what is left is released here.
    """
    yield
    import ray

    if "local_ray" in request.fixturenames and ray.is_initialized():
        left = _release_placement_groups()
        if left:
            import warnings

            warnings.warn(
                f"{request.node.name} left {left} placement group(s) in Ray", stacklevel=1
            )


@pytest.fixture(scope="session")
def smoke_sweep(local_ray, tmp_path_factory):
    """The smoke grid (2 methods x {MCE, DM(CE)}, 2 epochs), run once for every test reading it."""
    storage = tmp_path_factory.mktemp("smoke-sweep")
    return run_spec(tiny_spec("smoke-it"), storage)


@pytest.fixture(scope="session")
def stack():
    """The compose system as processes: PostgreSQL, MLflow, two Ray nodes, ``dmsweep serve``."""
    from stack import running_stack

    with running_stack() as running:
        yield running


@pytest.fixture(scope="session")
def served_smoke(stack):
    """search_spaces/smoke.yaml submitted over HTTP, run to its end: (stack, final view)."""
    from sweep_helpers import REPO

    sweep = stack.submit((REPO / "search_spaces" / "smoke.yaml").read_text())
    return stack, stack.wait(sweep["id"], ("succeeded", "failed", "cancelled"))
