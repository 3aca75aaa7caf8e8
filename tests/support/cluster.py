"""Sweeps on a 2-node ``ray.cluster_utils.Cluster``, run by a script in a process of its own.

A process is connected to one Ray only, and the test session holds another: a test runs a
script (``python SCRIPT SPEC.yaml STORAGE``, tests/integration/cluster_sweep.py and
fault_cluster.py) with :func:`run_cluster_script`; the script builds its cluster with
:func:`two_node_cluster` and prints its outcome as JSON on its last line.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray._common.utils import reset_ray_address
from ray.cluster_utils import Cluster

from service.sweep.ray_setup import ray_init_options
from tests.support.processes import end_session, start_session


def run_cluster_script(
    script: Path, spec_file: Path, storage: Path, log: Path, timeout_s: float
) -> dict[str, Any]:
    """Run ``script`` on a spec in a new session, ended whatever happens; its JSON outcome."""
    process = start_session(
        [sys.executable, str(script), str(spec_file), str(storage)],
        log,
        env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    )
    try:
        rc = process.wait(timeout=timeout_s)
    finally:
        end_session(process.pid)
    output = log.read_text()
    assert rc == 0, output
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


@contextlib.contextmanager
def two_node_cluster(**head_args: Any) -> Iterator[tuple[Cluster, Any]]:
    """A head and a second node of one CPU and one trial slot each, this process connected.

    ``head_args`` add to the head's node arguments. Yields the cluster and its second node.
    """
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"trial_slot": 1}, **head_args},
    )
    try:
        node = cluster.add_node(num_cpus=1, resources={"trial_slot": 1})
        cluster.wait_for_nodes()
        ray.init(**ray_init_options(cluster.address))
        yield cluster, node
    finally:
        ray.shutdown()
        try:
            cluster.shutdown()
        finally:
            # The cluster's address is in /tmp/ray/ray_current_cluster until then: left there,
            # every later ray.init() without an address on this machine joins a dead cluster.
            reset_ray_address()
