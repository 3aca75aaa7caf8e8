"""Helpers of the integration tests: tiny specs, the engine, processes in their own session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

# 4 logical CPUs on 2 cores: two 1-worker trials at once, each trial's driver on a slot.
RAY_CPUS = 4
TRIAL_SLOTS = 2


def tiny_spec(name: str, **changes: Any) -> dict[str, Any]:
    """A sweep of synthetic 16-pixel images and the small CNN: seconds per trial."""
    spec: dict[str, Any] = {
        "name": name,
        "grid": {
            "dataset": ["synthetic"],
            "backbone": ["smallnet"],
            "method": ["mixup", "cutmix"],
            "loss": ["mce", "dm_ce"],
            "seeds": [0],
        },
        "recipe": "smoke",
        "epochs": 2,
        "data": {
            "synthetic": {
                "num_classes": 4,
                "image_size": 16,
                "synthetic_images": {"train": 256, "test": 128},
            }
        },
        "eval": {"mixed_batch": 32},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_spec(spec: dict[str, Any], storage: Path):
    """Run a spec through the engine on the session's Ray; the outcome."""
    from service.engine import run_sweep
    from service.spec import spec_from_dict

    text = yaml.safe_dump(spec, sort_keys=False)
    return run_sweep(spec_from_dict(spec), text, storage_path=storage)


# --- processes a test starts: its own session, ended by session id -----------------------------


def start_session(command: list[str], log: Path, env: dict[str, str] | None = None):
    """A process in a new session (Ray's processes it starts keep that session id)."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(REPO), **(env or {})},
    )


def session_processes(session_id: int) -> list[int]:
    """Live processes of a session (zombies, already dead, are left to their reaper)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and os.getsid(int(entry.name)) == session_id:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


def end_session(session_id: int, wait_s: float = 20) -> None:
    """SIGTERM, then SIGKILL, every process of a session this test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_processes(session_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while session_processes(session_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_processes(session_id):
            return


DMSWEEP = [sys.executable, "-m", "service.cli"]
