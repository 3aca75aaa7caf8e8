"""A sweep on a 2-node ``ray.cluster_utils.Cluster`` whose second node is removed mid-sweep.

Usage: ``python fault_cluster.py SPEC.yaml STORAGE``; prints the outcome as JSON on its last
line. Each node has one CPU, so with two trials of one worker each node trains one trial in its
Tune trial's process. Once every trial with a process on the second node has a kept checkpoint
(its log shows epoch 2: epoch 1's checkpoint was kept before its report), the node is removed as
in a crash. Run by test_faults.py in a subprocess (tests/support/cluster.py says why).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import yaml
from ray import tune
from ray.cluster_utils import Cluster
from ray.util.state import list_nodes

from service.spec.reading import spec_from_dict
from service.sweep.engine import run_sweep
from tests.support.cluster import two_node_cluster
from tests.support.ports import free_port


def on_node(log: str, node_id: str) -> bool:
    """Whether a trial's log shows its driver or one of its workers on ``node_id``."""
    return bool(re.search(rf"(driver|worker) on node {node_id}\b", log))


def remove_when_ready(cluster: Cluster, node, storage: Path, trials: int, done: dict) -> None:
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        logs = [p.read_text() for p in storage.glob("*/logs/*.log")]
        there = [log for log in logs if on_node(log, node.node_id)]
        # Both processes of the node are known (a driver and a worker), each trial with one of
        # them has a registered checkpoint, and none has finished yet.
        drivers = sum(f"driver on node {node.node_id}" in log for log in there)
        workers = sum(f"worker on node {node.node_id}" in log for log in there)
        if len(logs) == trials and drivers and workers:
            if any("finished" in log for log in there):
                done["error"] = "a trial on the node finished before the node could be removed"
                return
            if all("epoch 2:" in log for log in there):
                cluster.remove_node(node, allow_graceful=False)
                done["removed_at"] = time.time()
                return
        time.sleep(0.05)
    done["error"] = "the node's trials never reached epoch 2"


def main(spec_file: str, storage: str) -> None:
    # The test ends this process with SIGTERM when it runs too long: clean up as on an error.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A dashboard of its own: the test session's Ray holds the default port, and without a
    # dashboard Ray Train cannot tell that a lost driver's controller is dead, so the worker
    # placement group of that driver's trial is never freed and the trial's retry waits for a
    # CPU forever.
    with two_node_cluster(
        include_dashboard=True, dashboard_port=free_port(), dashboard_agent_listen_port=None
    ) as (cluster, node):
        list_nodes(limit=1)  # the dashboard answers (it raises otherwise)
        text = Path(spec_file).read_text()
        spec = spec_from_dict(yaml.safe_load(text))
        trials = len(spec.grid.method) * len(spec.grid.loss)
        done: dict = {}
        remover = threading.Thread(
            target=remove_when_ready,
            args=(cluster, node, Path(storage), trials, done),
            daemon=True,
        )
        remover.start()
        outcome = run_sweep(spec, text, storage_path=storage)
        remover.join(timeout=10)
        analysis = tune.ExperimentAnalysis(str(outcome.folder.path))
        print(
            json.dumps(
                {
                    "exit_code": outcome.exit_code,
                    "folder": str(outcome.folder.path),
                    "head": cluster.head_node.node_id,
                    "removed": node.node_id,
                    "remover": done,
                    "tune_trials": {t.trial_id: t.status for t in analysis.trials},
                }
            )
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
