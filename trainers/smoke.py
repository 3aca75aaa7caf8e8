"""One grid cell trained in-process: backbone, mixing policy and loss, on images in memory.

This is the small loop behind ``dmsweep demo``; the full training loop of the paper's recipes
(schedules, checkpoints, the paper's metrics, Ray Train workers) builds on the same pieces:
``trainers.mixing.POLICIES``, ``trainers.objectives.objective`` and ``trainers.backbones``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from trainers.backbones import build_backbone
from trainers.data.synthetic import ImageSet
from trainers.mixing import POLICIES, MixedBatch
from trainers.objectives import objective


@dataclass(frozen=True)
class CellSettings:
    """What one cell trains: a mixing policy with its alpha, a loss with its hyperparameters."""

    policy: str
    loss: str
    alpha: float
    loss_options: dict[str, float] = field(default_factory=dict)
    backbone: str = "smallnet"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0


@dataclass(frozen=True)
class CellResult:
    """Top-1 accuracy (%) after the last epoch and at its best, with the cost of the run."""

    top1: float
    top1_best: float
    train_loss: float
    seconds: float
    images_per_s: float


def _normaliser(images: Tensor) -> Callable[[Tensor], Tensor]:
    pixels = images.float().div_(255)
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True)
    return lambda batch: (batch.float().div(255) - mean) / std


def _mix_and_forward(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    settings: CellSettings,
    generator: torch.Generator,
) -> tuple[Tensor, MixedBatch]:
    if settings.policy != "manifoldmix":
        batch = POLICIES[settings.policy](
            inputs, targets, alpha=settings.alpha, generator=generator
        )
        return model(batch.inputs), batch
    # ManifoldMix: the stage is drawn once per batch, the mixing happens inside the network.
    stage = int(torch.randint(model.mix_stages, (1,), generator=generator))
    mixed: list[MixedBatch] = []

    def mix(features: Tensor) -> Tensor:
        mixed.append(
            POLICIES["manifoldmix"](features, targets, alpha=settings.alpha, generator=generator)
        )
        return mixed[0].inputs

    logits = model(inputs, mix=mix, mix_stage=stage)
    return logits, mixed[0]


@torch.no_grad()
def top1_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(labels), batch_size)
    )
    return 100.0 * correct / len(labels)


def train_cell(
    train: ImageSet,
    val: ImageSet,
    settings: CellSettings,
    on_epoch: Callable[[int, float], None] | None = None,
) -> CellResult:
    """Train one cell from scratch and evaluate it after each epoch."""
    if settings.policy not in POLICIES:
        raise ValueError(f"unknown policy {settings.policy!r}; allowed: {', '.join(POLICIES)}")
    loss_fn = objective(settings.loss, **settings.loss_options)
    torch.manual_seed(settings.seed)  # the same initial weights for every cell of a seed
    generator = torch.Generator().manual_seed(settings.seed)
    normalise = _normaliser(train.images)
    val_images = normalise(val.images)
    model = build_backbone(settings.backbone, len(train.classes), train.images.shape[-1])
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=0.9,
        weight_decay=settings.weight_decay,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(train.labels) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch
    )
    accuracies, losses, start = [], [], time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        for first in range(0, len(order), settings.batch_size):
            index = order[first : first + settings.batch_size]
            inputs = normalise(train.images[index])
            flip = torch.rand(len(index), generator=generator) < 0.5
            inputs = torch.where(flip[:, None, None, None], inputs.flip(3), inputs)
            logits, batch = _mix_and_forward(
                model, inputs, train.labels[index], settings, generator
            )
            loss = loss_fn(logits, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
        accuracies.append(top1_accuracy(model, val_images, val.labels))
        if on_epoch is not None:
            on_epoch(epoch, accuracies[-1])
    seconds = time.perf_counter() - start
    return CellResult(
        top1=accuracies[-1],
        top1_best=max(accuracies),
        train_loss=torch.stack(losses[-steps_per_epoch:]).mean().item(),
        seconds=seconds,
        images_per_s=settings.epochs * len(train.labels) / seconds,
    )
