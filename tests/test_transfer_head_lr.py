"""The classifier's lr (trainers/optim.py with_head_lr): found on timm and dmsweep backbones,
at scale x its group's lr, with each group's other settings kept, for each optimiser kind."""

from __future__ import annotations

import pytest
import torch

from trainers.backbones import build_backbone
from trainers.optim import build_optimizer, with_head_lr
from trainers.recipes import get_recipe
from trainers.ssl.features import classifier_layer


def _by_parameter(optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize(
    ("backbone", "head"),
    [("resnet18", "model.fc"), ("vit_tiny_patch16_224", "model.head"), ("smallnet", "head")],
)
@pytest.mark.parametrize(
    "overrides",
    [{}, {"optimizer": "adamw", "momentum": None, "nesterov": False, "betas": (0.9, 0.999)}],
)
def test_the_head_alone_learns_at_scale_times_the_lr(backbone, head, overrides):
    torch.manual_seed(0)
    model = build_backbone(backbone, 5, 32)
    recipe = get_recipe("transfer", overrides)
    plain = build_optimizer(model, recipe, 24)
    scaled = with_head_lr(plain, classifier_layer(model).parameters(), 10.0)
    before, after = _by_parameter(plain), _by_parameter(scaled)
    heads = {id(p) for p in model.get_submodule(head).parameters()}
    assert heads and len(after) == len(before) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        factor = 10.0 if id(p) in heads else 1.0
        assert after[id(p)]["lr"] == pytest.approx(factor * 1e-3), name
        # Weight decay as build_optimizer decided it (none on biases and norms for AdamW).
        assert after[id(p)]["weight_decay"] == before[id(p)]["weight_decay"], name
    assert scaled is plain
    assert scaled.param_groups[0]["lr"] == pytest.approx(1e-3)  # the base group first


def test_scale_one_keeps_the_optimiser():
    model = build_backbone("smallnet", 3, 16)
    optimizer = build_optimizer(model, get_recipe("ssl"), 64)
    assert with_head_lr(optimizer, classifier_layer(model).parameters(), 1.0) is optimizer
    with pytest.raises(ValueError, match="scale"):
        with_head_lr(optimizer, [], 0.0)
