"""The trained network of a checkpoint as a plain weights file, what ``backbone.weights`` reads.

A checkpoint folder (``dmsweep train --out``, a sweep's trial) holds the optimiser, schedule and
random streams as well; a transfer run needs only the network's tensors, classifier included
(Co-Tuning's source head, ``trainers.weights.read_source_head``). ``make tl-pretrain`` runs

    python -m trainers.export CHECKPOINT_FOLDER WEIGHTS_FILE

``.safetensors`` is written by safetensors, any other name by ``torch.save`` of the tensors
alone; either is read back by ``trainers.weights.read_state_dict`` without unpickling objects.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from trainers.checkpoint import load_checkpoint


def checkpoint_weights(folder: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The network's state dict in a checkpoint folder (the trained weights, not the EMA's)."""
    state = load_checkpoint(Path(folder))["model"]
    # DDP's prefix: a weights file names the network's own keys.
    return {key.removeprefix("module."): tensor for key, tensor in state.items()}


def write_weights(state: dict[str, Tensor], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` (its folder made if missing), as safetensors or torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Contiguous CPU copies: safetensors refuses shared or strided storage.
    tensors = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in state.items()}
    partial = path.with_name(path.name + ".partial")
    if path.suffix == ".safetensors":
        save_file(tensors, str(partial))
    else:
        torch.save(tensors, partial)
    partial.replace(path)  # a reader never sees half a file
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m trainers.export CHECKPOINT_FOLDER WEIGHTS_FILE``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder (checkpoint_NNNN)")
    parser.add_argument("weights", type=Path, help="the file to write (.pt or .safetensors)")
    args = parser.parse_args(argv)
    state = checkpoint_weights(args.checkpoint)
    path = write_weights(state, args.weights)
    print(f"wrote {len(state)} tensors to {path}")


if __name__ == "__main__":
    main()
