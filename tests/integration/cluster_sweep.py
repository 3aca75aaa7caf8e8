"""Run a sweep on a 2-node ``ray.cluster_utils.Cluster`` (one process, its own Ray).

Usage: ``python cluster_sweep.py SPEC.yaml STORAGE``; prints the outcome as JSON (the node each
trial's workers ran on, read from the trial logs). Run by test_sweep_cluster.py in a subprocess
(tests/support/cluster.py says why).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import ray
import yaml

from service.spec.reading import spec_from_dict
from service.sweep.engine import run_sweep
from tests.support.cluster import two_node_cluster


def main(spec_file: str, storage: str) -> None:
    with two_node_cluster():
        text = Path(spec_file).read_text()
        outcome = run_sweep(spec_from_dict(yaml.safe_load(text)), text, storage_path=storage)
        nodes = {}
        for record in outcome.folder.records():
            log = outcome.folder.log_file(record.trial_id).read_text()
            nodes[record.trial_id] = re.findall(r"worker on node (\w+)", log)
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print(
            json.dumps(
                {
                    "exit_code": outcome.exit_code,
                    "statuses": [r.status.value for r in outcome.folder.records()],
                    "worker_nodes": nodes,
                    "cluster_nodes": alive,
                }
            )
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
