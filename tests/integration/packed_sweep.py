"""Run a sweep on a local Ray that declares one GPU (there is none: trials train on the CPU).

Usage: ``python packed_sweep.py SPEC.yaml STORAGE``; prints the outcome as JSON: the statuses,
the GPU id and process each trial's log names, and the most GPU and CPU that Ray counted as
held at once (polled every 0.1 s while the sweep ran). Run by test_packed_trials.py in a
process of its own: the test session's shared Ray declares no GPU.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import ray
import yaml

from service.spec.reading import spec_from_dict
from service.sweep.engine import run_sweep
from service.sweep.ray_setup import ray_init_options

CPUS = 2
GPU_LINE = re.compile(r"worker on node \w+, pid (\d+), GPU (\S+)")


def main(spec_file: str, storage: str) -> None:
    ray.init(**ray_init_options("local", slots=8, num_cpus=CPUS), num_gpus=1)
    held = {"GPU": 0.0, "CPU": 0.0}
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.1):
            free = ray.available_resources()
            held["GPU"] = max(held["GPU"], 1 - free.get("GPU", 0.0))
            held["CPU"] = max(held["CPU"], CPUS - free.get("CPU", 0.0))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        text = Path(spec_file).read_text()
        outcome = run_sweep(spec_from_dict(yaml.safe_load(text)), text, storage_path=storage)
    finally:
        done.set()
        poller.join()
        ray.shutdown()
    records = outcome.folder.records()
    logs = {r.trial_id: outcome.folder.log_file(r.trial_id).read_text() for r in records}
    starts = {trial: GPU_LINE.findall(log) for trial, log in logs.items()}
    gpus = {trial: [gpu for _, gpu in found] for trial, found in starts.items()}
    pids = {trial: [int(pid) for pid, _ in found] for trial, found in starts.items()}
    print(
        json.dumps(
            {
                "exit_code": outcome.exit_code,
                "statuses": [r.status.value for r in records],
                "gpus": gpus,
                "pids": pids,
                "held": held,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
