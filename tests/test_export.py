"""A checkpoint's network as a weights file (``trainers.export``), read back by trainers.weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.backbones import build_backbone
from trainers.checkpoint import load_checkpoint
from trainers.config import TrainConfig
from trainers.export import main
from trainers.loop import run
from trainers.weights import read_source_head, read_state_dict


@pytest.mark.parametrize("name", ["source.pt", "source.safetensors"])
def test_the_last_checkpoint_exports_the_trained_network_with_its_head(
    tmp_path: Path, name: str
) -> None:
    config = TrainConfig.model_validate(
        {
            "data": {
                "name": "synthetic",
                "num_classes": 3,
                "synthetic_images": {"train": 64, "test": 32},
            },
            "backbone": {"name": "smallnet"},
            "mixing": {"method": "vanilla"},
            "loss": {"name": "ce"},
            "recipe": "smoke",
            "epochs": 1,
            "batch_size": 32,
        }
    )
    saved: dict[str, torch.Tensor] = {}
    out = tmp_path / "weights" / name

    def export(metrics: dict[str, float], checkpoint: str | None) -> None:
        assert checkpoint is not None  # the last epoch writes one
        saved.update(load_checkpoint(checkpoint)["model"])
        main([checkpoint, str(out)])

    run(config, export)
    state = read_state_dict(out)
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    # Loadable, and the 3-class head is there for Co-Tuning (a 5-class target here).
    weight, bias = read_source_head(build_backbone("smallnet", 5, 32), out)
    assert weight.shape[0] == 3 and bias is not None
    assert (
        build_backbone("smallnet", 3, 32, weights=out)
        .state_dict()["head.weight"]
        .equal(saved["head.weight"])
    )
