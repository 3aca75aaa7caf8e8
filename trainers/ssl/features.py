"""The penultimate features of a backbone, read by a forward pre-hook on its classifier.

ReMixMatch (Berthelot et al. 2020, its self-supervised rotation loss) predicts the rotation of
an image from the features its classifier sees; TorchSSL and USB give their Wide-ResNet a second
linear head (``rot_classifier``, 4 outputs) on the pooled features. Our backbones
(:mod:`trainers.backbones`) return logits only, so the features are caught on their way into the
classifier layer: a forward *pre*-hook sees the classifier's input, whatever the network does
before it (pooling, timm's ``forward_head``), without changing any backbone.

The classifier layer is found (inside a DDP or ``torch.compile`` wrapper) by, in order: timm's
``get_classifier()`` (the model itself, or the timm model a
:class:`~trainers.backbones.TimmBackbone` wraps under ``.model``), then the ``classifier_name``
attribute of dmsweep's own networks (``fc`` for Wide-ResNet, ``head`` for SmallNet), which
``trainers.weights._classifier_prefixes`` reads as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from trainers.backbones import TimmBackbone

__all__ = [
    "CapturedFeatures",
    "classifier_layer",
    "feature_dim",
    "penultimate_features",
    "unwrapped",
]


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        else:
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def classifier_layer(model: nn.Module) -> nn.Module:
    """The layer that turns ``model``'s penultimate features into logits."""
    model = unwrapped(model)
    inner = model.model if isinstance(model, TimmBackbone) else model
    get_classifier = getattr(inner, "get_classifier", None)
    if callable(get_classifier):
        layer = get_classifier()
        if isinstance(layer, nn.Module) and not isinstance(layer, nn.Identity):
            return layer
    name = getattr(inner, "classifier_name", None)
    if isinstance(name, str):
        return inner.get_submodule(name)
    raise ValueError(
        f"cannot find the classifier of {type(model).__name__}: it has neither timm's "
        "get_classifier() nor a classifier_name attribute"
    )


def feature_dim(model: nn.Module) -> int:
    """How many features the classifier of ``model`` takes (the rotation head's input size)."""
    layer = classifier_layer(model)
    size = getattr(layer, "in_features", None)
    if not isinstance(size, int):
        raise ValueError(
            f"the classifier of {type(model).__name__} is a {type(layer).__name__}, not a "
            "linear layer; cannot tell its input size"
        )
    return size


@dataclass
class CapturedFeatures:
    """What the hook saw: the classifier's input of the last forward inside the context."""

    value: Tensor | None = field(default=None)

    def get(self) -> Tensor:
        """The captured (N, D) features; a RuntimeError when no forward ran."""
        if self.value is None:
            raise RuntimeError("no forward reached the classifier inside penultimate_features()")
        return self.value


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[CapturedFeatures]:
    """Within the context, every forward of ``model`` stores its classifier's input.

    Example::

        with penultimate_features(model) as captured:
            logits = model(images)
        features = captured.get()  # (N, D), in the autograd graph

    The hook is removed on leaving, so forwards elsewhere (the label guess, the mixed batch)
    keep no reference to their features.
    """
    captured = CapturedFeatures()

    def store(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        # Linear layers take one tensor; flattening keeps the (N, D) contract for a 1x1 conv
        # head as well.
        captured.value = inputs[0].flatten(1)

    handle = classifier_layer(model).register_forward_pre_hook(store)
    try:
        yield captured
    finally:
        handle.remove()
