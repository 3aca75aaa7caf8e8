"""Backbone networks: ``build_backbone(name, num_classes, image_size)``.

``smallnet`` is a small, fast CNN for CPU runs, the demo and tests (not a network of the paper);
any other name goes to ``timm.create_model`` with random weights. Backbones that support
ManifoldMix take ``forward(x, mix=None, mix_stage=0)`` and apply ``mix`` to the features that
enter stage ``mix_stage`` (stage 0 is the input itself); ``mix_stages`` says how many there are.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
from torch import Tensor, nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallNet(nn.Module):
    """Three conv blocks (width w, 2w, 4w, each halving the resolution), pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                _conv_block(in_channels, width),
                _conv_block(width, 2 * width),
                _conv_block(2 * width, 4 * width),
            ]
        )
        self.head = nn.Linear(4 * width, num_classes)

    @property
    def mix_stages(self) -> int:
        """ManifoldMix may mix the input (stage 0) or the output of any block but the last."""
        return len(self.stages)

    def forward(
        self, x: Tensor, mix: Callable[[Tensor], Tensor] | None = None, mix_stage: int = 0
    ) -> Tensor:
        """Logits; with ``mix``, features entering stage ``mix_stage`` are mixed first."""
        for index, stage in enumerate(self.stages):
            if mix is not None and index == mix_stage:
                x = mix(x)
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))


def build_backbone(name: str, num_classes: int, image_size: int) -> nn.Module:
    """A backbone by name with randomly initialised weights."""
    del image_size  # the CIFAR variants of the backbone issue use it to pick their stem
    if name == "smallnet":
        return SmallNet(num_classes)
    return timm.create_model(name, num_classes=num_classes, pretrained=False)
