"""The forward FLOPs of one image through a backbone: how a plan scales an uncalibrated one.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on a network built on the ``meta``
device (no weights allocated, nothing computed), else on the CPU; a network neither can run is
measured by its parameters times its pixels, and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Work:
    """The work of one image's forward pass: a number, and what it counts."""

    amount: float
    unit: str  # "FLOPs" or "parameters x pixels"

    def describe(self) -> str:
        """For a plan's notes: ``2.3 GFLOPs``."""
        if self.unit == "FLOPs":
            return f"{self.amount / 1e9:.3g} GFLOPs"
        return f"{self.amount:.3g} parameters x pixels"


def _count(backbone: str, image_size: int, num_classes: int, device: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainers.backbones import build_backbone

    with torch.device(device):
        model = build_backbone(backbone, num_classes, image_size)
        image = torch.zeros(1, 3, image_size, image_size)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return float(counter.get_total_flops())


@cache
def forward_work(backbone: str, image_size: int, num_classes: int) -> Work:
    """FLOPs of one ``image_size`` image's forward pass (``parameters x pixels`` if uncountable).

    Training costs about three forward passes (forward, and backward twice as much) for every
    network alike, so the ratio of two backbones' forward FLOPs is the ratio of their steps.
    """
    # Only on the meta device: no weights, no real forward pass (the service plans each sweep
    # in its submit request).
    try:
        flops = _count(backbone, image_size, num_classes, "meta")
    except Exception:  # an op without a meta kernel, a model that refuses the size, ...
        flops = 0.0
    if flops > 0:
        return Work(flops, "FLOPs")
    return parameter_work(backbone, image_size, num_classes)


@cache
def parameter_work(backbone: str, image_size: int, num_classes: int) -> Work:
    """Parameters times pixels: the rough measure where FLOPs cannot be counted."""
    import torch

    from trainers.backbones import build_backbone

    with torch.device("meta"):
        model = build_backbone(backbone, num_classes, image_size)
    parameters = sum(p.numel() for p in model.parameters())
    return Work(float(parameters * image_size * image_size), "parameters x pixels")


def work_ratio(
    reference: tuple[str, int], target: tuple[str, int], num_classes: int
) -> tuple[float, str]:
    """Work per image of ``target`` over that of ``reference`` (each a backbone and size).

    Both counted in the same unit; with a note saying both figures.
    """
    ours, theirs = forward_work(*target, num_classes), forward_work(*reference, num_classes)
    if ours.unit != theirs.unit:
        ours, theirs = parameter_work(*target, num_classes), parameter_work(*reference, num_classes)
    note = f"{ours.describe()} vs {theirs.describe()} per image"
    return ours.amount / theirs.amount, note


# Passes of the backbone in one training step of a method, counting a forward as 1 and a
# backward as 2 (weight and input gradients); a backward for the input gradient alone as 1.
# A static policy's step is one forward and one backward: 3.
STATIC_STEP_PASSES = 3.0
METHOD_STEP_PASSES: dict[str, tuple[float, str]] = {
    # + an eval-mode forward and an input-gradient backward for the saliency (bench/mixing.py
    # measures that pass at 0.65 of a ResNet-18 step on the CPU); the graph cuts run on the
    # CPU beside it and are not counted.
    "puzzlemix": (5.0, "a saliency pass (forward + input gradient) besides the step"),
    # + the momentum encoder's forward of the clean batch, its forward and input-gradient
    # backward of the Mix Block's batch, and the backbone's forward and backward of the clean
    # batch (trainers.mixing.learned); the Mix Block itself is small beside them.
    "automix": (9.0, "the momentum encoder's two passes and the clean batch besides the step"),
    "samix": (9.0, "the momentum encoder's two passes and the clean batch besides the step"),
}


def method_step_work(method: str) -> tuple[float, str | None]:
    """How many static steps one step of ``method`` is worth, and why (None: 1, static)."""
    if method not in METHOD_STEP_PASSES:
        return 1.0, None
    passes, why = METHOD_STEP_PASSES[method]
    return passes / STATIC_STEP_PASSES, why
