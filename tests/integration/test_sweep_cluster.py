"""A sweep on a 2-node cluster places trials on both nodes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sweep_helpers import end_session, start_session, tiny_spec, write_spec

SCRIPT = Path(__file__).with_name("cluster_sweep.py")


def test_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    spec = write_spec(tmp_path, tiny_spec("cluster", epochs=1))  # 4 trials
    log = tmp_path / "cluster.log"
    process = start_session(
        [sys.executable, str(SCRIPT), str(spec), str(tmp_path / "runs")],
        log,
        env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    )
    try:
        rc = process.wait(timeout=600)
    finally:
        end_session(process.pid)
    output = log.read_text()
    assert rc == 0, output
    outcome = json.loads(output.strip().splitlines()[-1])
    assert outcome["exit_code"] == 0
    assert outcome["statuses"] == ["succeeded"] * 4
    used = [nodes[0] for nodes in outcome["worker_nodes"].values()]
    assert len(used) == 4
    # Each node has one trial slot and one CPU: two trials at a time, one per node.
    assert set(used) == set(outcome["cluster_nodes"]) and len(set(used)) == 2
