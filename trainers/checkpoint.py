"""Checkpoint folders of the training loop: the state file, and every random stream.

A folder holds ``state.pt`` (model, optimiser, schedule, scaler, EMA, epoch, step, accuracy
history and the random streams of every rank) and ``trial.yaml`` (the trial that wrote it).
Resuming restores all of it, so a resumed run continues the same run.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

CHECKPOINT_FILE = "state.pt"


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, object]:
    """The loop's own generators and the process-wide streams (torch, CUDA, Python, NumPy).

    Stored as tensors and plain numbers so that ``torch.load(weights_only=True)`` reads them.
    """
    numpy_state = np.random.get_state(legacy=False)["state"]  # MT19937's key and position
    return {
        "generators": {name: g.get_state() for name, g in generators.items()},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(numpy_state["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["pos"]),
    }


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Put back what :func:`rng_state` saved."""
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(state["python"]), None))
    numpy_keys = state["numpy"].numpy().astype(np.uint32)
    # The checkpoint keeps no cached Gaussian: restore none (has_gauss 0, gauss 0.0).
    np.random.set_state(("MT19937", numpy_keys, state["numpy_pos"], 0, 0.0))


def save_checkpoint(state: dict, trial: dict) -> str:
    """A new temporary folder holding ``state`` and the trial; the caller removes it."""
    folder = Path(tempfile.mkdtemp(prefix="dmsweep-checkpoint-"))
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / "trial.yaml").write_text(yaml.safe_dump(trial))
    return str(folder)


def load_checkpoint(folder: str | Path) -> dict:
    """The state saved by the loop in a checkpoint folder."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {folder}: {CHECKPOINT_FILE} is missing")
    return torch.load(path, map_location="cpu", weights_only=True)
