"""A sweep on a 2-node cluster places trials on both nodes."""

from __future__ import annotations

from pathlib import Path

from sweep_helpers import tiny_spec, write_spec

from tests.support.cluster import run_cluster_script

SCRIPT = Path(__file__).with_name("cluster_sweep.py")


def test_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    spec = write_spec(tmp_path, tiny_spec("cluster", epochs=1))  # 4 trials
    outcome = run_cluster_script(
        SCRIPT, spec, tmp_path / "runs", tmp_path / "cluster.log", timeout_s=600
    )
    assert outcome["exit_code"] == 0
    assert outcome["statuses"] == ["succeeded"] * 4
    used = [nodes[0] for nodes in outcome["worker_nodes"].values()]
    assert len(used) == 4
    # Each node has one trial slot and one CPU: two trials at a time, one per node.
    assert set(used) == set(outcome["cluster_nodes"]) and len(set(used)) == 2
