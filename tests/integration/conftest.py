"""Real Ray, real MLflow: one local Ray and one smoke sweep shared by the tests that can."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sweep_helpers import RAY_CPUS, TRIAL_SLOTS, run_spec, tiny_spec


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the session, ended by this fixture (never `ray stop`)."""
    import ray

    from service.sweep.ray_setup import ray_init_options

    ray.init(**ray_init_options("local", slots=TRIAL_SLOTS, num_cpus=RAY_CPUS))
    yield
    ray.shutdown()


def _held_placement_groups(wait_s: float) -> list[str]:
    """The shared Ray's placement groups still holding resources after up to ``wait_s``."""
    from ray.util import placement_group_table

    deadline = time.monotonic() + wait_s
    while True:
        held = [
            pg_id
            for pg_id, entry in placement_group_table().items()
            if entry["state"] in ("CREATED", "PENDING", "RESCHEDULING")
        ]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


@pytest.fixture(autouse=True)
def _shared_ray_left_clean(request):
    """After a test on the shared Ray, no placement group may keep its CPUs or trial slots.

    Ray 2.60 can leave a stopped or failed trial's worker group behind
    (service/sweep/ray_workarounds.py says when and what the engine does about it); the next
    tests' trials would then wait for CPUs forever. A test that leaves one fails here, and the
    group is removed so that the tests after it can run.
    """
    yield
    import ray

    if "local_ray" not in request.fixturenames or not ray.is_initialized():
        return
    held = _held_placement_groups(wait_s=30)
    if held:
        from service.sweep.ray_workarounds import remove_placement_group_by_id

        for pg_id in held:
            remove_placement_group_by_id(pg_id)
        pytest.fail(f"{request.node.name} left placement groups in Ray: {held}")


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
    from tests.support import REPO

    sweep = stack.submit((REPO / "search_spaces" / "smoke.yaml").read_text())
    return stack, stack.wait(sweep["id"], ("succeeded", "failed", "cancelled"))
