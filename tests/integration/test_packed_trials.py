"""Four trials of a quarter GPU each share one GPU, and a fifth waits for one of them."""

from __future__ import annotations

from pathlib import Path

from sweep_helpers import tiny_spec, write_spec

from tests.support.cluster import run_cluster_script

SCRIPT = Path(__file__).with_name("packed_sweep.py")


def test_four_quarter_gpu_trials_run_at_once_on_one_gpu(tmp_path):
    # 6 trials (6 cells, one epoch) of 0.25 GPU and 0.25 CPU: the 2 CPUs would hold all 6 at
    # once, the one GPU holds 4.
    spec = tiny_spec(
        "packed",
        epochs=1,
        grid={"method": ["mixup", "cutmix", "fmix"]},
        resources={"gpus_per_worker": 0.25, "cpus_per_worker": 0.25},
    )
    outcome = run_cluster_script(
        SCRIPT, write_spec(tmp_path, spec), tmp_path / "runs", tmp_path / "packed.log", 600
    )
    assert outcome["exit_code"] == 0
    assert outcome["statuses"] == ["succeeded"] * 6
    # Every trial was given GPU 0, the one the local Ray declared.
    assert outcome["gpus"] == {trial: ["0"] for trial in outcome["gpus"]}
    # Ray's own accounting: at most the whole GPU held, and at its peak by four trials (their
    # CPUs: 4 x 0.25), never six.
    assert outcome["held"]["GPU"] == 1.0
    assert outcome["held"]["CPU"] == 1.0
    # The two trials of the second round trained in processes of the first: a sweep keeps a
    # trial's process for its next trial (service.sweep.engine._reuse_trial_processes).
    processes = {pid for pids in outcome["pids"].values() for pid in pids}
    assert len(processes) <= 4, outcome["pids"]
