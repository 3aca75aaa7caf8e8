"""Run a sweep on a 2-node ``ray.cluster_utils.Cluster`` (one process, its own Ray).

Usage: ``python cluster_sweep.py SPEC.yaml STORAGE``; prints the outcome as JSON (the node each
trial's workers ran on, read from the trial logs). Run by test_sweep_cluster.py in a subprocess:
a process can be connected to one Ray only, and the test session holds another.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import ray
import yaml
from ray.cluster_utils import Cluster

from service.engine import run_sweep
from service.ray_options import ray_init_options
from service.spec import spec_from_dict


def main(spec_file: str, storage: str) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"trial_slot": 1}},
    )
    try:
        cluster.add_node(num_cpus=1, resources={"trial_slot": 1})
        cluster.wait_for_nodes()
        ray.init(**ray_init_options(cluster.address))
        text = Path(spec_file).read_text()
        outcome = run_sweep(spec_from_dict(yaml.safe_load(text)), text, storage_path=storage)
        nodes = {}
        for record in outcome.folder.records():
            log = outcome.folder.log_file(record["trial_id"]).read_text()
            nodes[record["trial_id"]] = re.findall(r"worker on node (\w+)", log)
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print(
            json.dumps(
                {
                    "exit_code": outcome.exit_code,
                    "statuses": [r["status"] for r in outcome.folder.records()],
                    "worker_nodes": nodes,
                    "cluster_nodes": alive,
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
