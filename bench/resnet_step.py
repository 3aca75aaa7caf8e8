"""One ResNet-18 training step (forward, backward, SGD step): the yardstick of the benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from _timing import median_seconds


def resnet18(num_classes: int, device: torch.device) -> torch.nn.Module:
    """A freshly initialised resnet18 of timm (ImageNet stem), in train mode on ``device``."""
    return timm.create_model("resnet18", num_classes=num_classes).to(device).train()


def resnet18_step(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> Callable[[], None]:
    """A closure running one SGD step of timm's resnet18 on this batch."""
    model = resnet18(num_classes, images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def resnet18_step_seconds(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Median seconds of one step (three steps timed after one warm-up step)."""
    step = resnet18_step(images, labels, num_classes)
    return median_seconds({"step": step}, images.device, rounds=3, calls_per_round=1, warmup=1)[
        "step"
    ]
