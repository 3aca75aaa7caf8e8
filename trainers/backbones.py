"""Backbone networks of the paper's benchmarks: ``build_backbone(name, num_classes, image_size)``.

Names are timm model names (``resnet18``, ``resnet34``, ``resnet50``, ``resnext50_32x4d``,
``deit_small_patch16_224``, ``swin_tiny_patch4_window7_224`` in the paper, any other timm name
too) or one of the networks timm lacks, listed in ``DMSWEEP_BACKBONES``:

* ``resnet18_cifar``, ``resnext50_cifar``: ResNet-18 and ResNeXt-50 (32x4d) with the CIFAR stem
  of the DM paper's section 4.1 (Tables 1 and 8 on CIFAR-100 and Tiny-ImageNet);
* ``wrn28_2``, ``wrn28_8``: Wide-ResNet-28-k (Zagoruyko & Komodakis, 2016), the WRN-28-8 of
  Table 1 and the WRN-28-2 / WRN-28-8 of the semi-supervised Table 7;
* ``smallnet``: a small, fast CNN for CPU runs, the demo and tests; not a network of the paper.

Every backbone built here supports ManifoldMix (Verma et al., 2019): ``forward(x, mix=None,
mix_stage=0)`` replaces the features entering stage ``mix_stage`` by ``mix(features)``, where
stage 0 is the input image, and ``mix_stages`` says how many stages there are:

* ResNet / ResNeXt (timm's and the CIFAR variants): 3 stages; 0 = input, 1, 2 = the output
  of ``layer1``, ``layer2``. That is the ManifoldMix paper's k in {0, 1, 2} and OpenMixup's
  ``layer=(0, 3)`` (an exclusive range), the DM paper's codebase; mixing after ``layer3`` too
  would be a choice neither made.
* Wide-ResNet: 3 stages; 0 = input, 1, 2 = the output of groups 1 and 2, as in ManifoldMix.
* SmallNet: 3 stages; 0 = input, 1, 2 = the output of blocks 1 and 2.
* Any other timm model (DeiT, Swin, ...): 1 stage, the input only.

timm models come wrapped (``StagedResNet`` for ResNets, ``TimmBackbone`` for the rest), the timm
model itself as ``.model``; ``weights=path`` loads into that model, so a timm state dict fits.

Options reach the network's constructor only from ``BACKBONE_OPTIONS`` (``check_options``):
timm's ``create_model`` also takes ``checkpoint_path`` (unpickles any file),
``pretrained_cfg(_overlay)`` (any local file, URL or hub repository) and ``cache_dir``, none of
which a spec may set. Weights are read by ``trainers.weights.read_state_dict``, which never
unpickles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

import timm
import torch.nn.functional as F
from timm.models import get_pretrained_cfg
from timm.models.resnet import ResNet
from torch import Tensor, nn

from trainers.weights import load_weights

Mix = Callable[[Tensor], Tensor]

PAPER_TIMM_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
)
"""The ImageNet-layout networks of the paper's Tables 2-6 and 9, by timm name."""


# --- options -------------------------------------------------------------------------------


def _rate(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    return None if ok and math.isfinite(value) else "a number in [0, 1)"


def _pool(value: Any) -> str | None:
    pools = ("avg", "max", "avgmax", "catavgmax", "token", "map", "")
    return None if value in pools else f"one of {', '.join(map(repr, pools))}"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096
    return None if ok else "a whole number in [1, 4096]"


BACKBONE_OPTIONS: dict[str, Callable[[Any], str | None]] = {
    # The keyword arguments timm's create_model documents for every model (drop_rate,
    # drop_path_rate, global_pool), ...
    "drop_rate": _rate,  # also Wide-ResNet's dropout between its convs
    "drop_path_rate": _rate,  # stochastic depth; the DeiT / Swin recipes set it (drop_path)
    "global_pool": _pool,
    # ... those of the paper's timm families (ResNet, ResNeXt, DeiT / ViT, Swin __init__) ...
    "drop_block_rate": _rate,
    "attn_drop_rate": _rate,
    "proj_drop_rate": _rate,
    "pos_drop_rate": _rate,
    "in_chans": _count,
    # ... SmallNet's width, and Wide-ResNet's activation slope and batch-norm momentum (TorchSSL's
    # WRN, which Table 7's numbers were trained with: leaky ReLU 0.1, momentum 0.001). The
    # recipes in trainers/recipes.py set drop_path_rate only.
    "width": _count,
    "leaky_slope": _rate,
    "bn_momentum": _rate,
}
"""Backbone options a spec may set, each with the check of its value (None: fine, else what is
allowed). Nothing else reaches a constructor: see the module's docstring for why."""


def check_options(options: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``options`` (a sentence per key naming what is allowed); [] if fine."""
    problems = []
    refused = sorted(key for key in options if key not in BACKBONE_OPTIONS)
    if refused:
        problems.append(
            f"option{'s' if len(refused) > 1 else ''} {', '.join(map(repr, refused))} not "
            f"allowed; allowed: {', '.join(BACKBONE_OPTIONS)} (weights: and pretrained: are "
            "the ways to start from trained weights)"
        )
    for key, value in options.items():
        check = BACKBONE_OPTIONS.get(key)
        wanted = check(value) if check is not None else None
        if wanted:
            problems.append(f"option {key!r} must be {wanted}; got {value!r}")
    return problems


def is_hub_name(name: str) -> bool:
    """Whether ``name`` names a model hub repository (timm downloads its config and weights)."""
    return name.startswith(("hf-hub:", "hf_hub:"))


class _Staged(Protocol):
    """A network with ManifoldMix stages, as an attribute or a property."""

    @property
    def mix_stages(self) -> int: ...


def _check_stage(model: _Staged, mix_stage: int) -> None:
    stages = model.mix_stages
    if not 0 <= mix_stage < stages:
        allowed = ", ".join(str(stage) for stage in range(stages))
        raise ValueError(
            f"mix_stage must be one of {allowed} for {type(model).__name__}; got {mix_stage}"
        )


# --- timm models ---------------------------------------------------------------------------


class TimmBackbone(nn.Module):
    """A timm model under ``.model`` with the ManifoldMix signature; mixes the input only.

    Its parameters are named ``model.<timm name>``; ``no_weight_decay`` and ``pretrained_cfg``
    are the timm model's, so timm's optimizer factory and data config still see them.
    """

    mix_stages: int = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The timm model's pretrained config (input size, mean and std, classifier name)."""
        cfg = self.model.pretrained_cfg
        assert isinstance(cfg, dict)  # timm's model builder sets a plain dict
        return cfg

    def no_weight_decay(self) -> set[str]:
        """Parameters timm exempts from weight decay (position embeddings, ...), named as here."""
        no_weight_decay = getattr(self.model, "no_weight_decay", None)
        names = no_weight_decay() if no_weight_decay is not None else ()
        return {f"model.{name}" for name in names}

    def forward(self, x: Tensor, mix: Mix | None = None, mix_stage: int = 0) -> Tensor:
        """Logits; with ``mix``, the input is mixed first (stage 0 is the only stage)."""
        if mix is not None:
            _check_stage(self, mix_stage)
            x = mix(x)
        return self.model(x)


class StagedResNet(TimmBackbone):
    """timm's ResNet / ResNeXt run stage by stage, so ManifoldMix can mix hidden features.

    Stages: 0 = input, 1 / 2 = output of ``layer1`` / ``layer2`` (ManifoldMix's k in {0, 1, 2}).
    Without ``mix`` the logits are those of the timm model's own forward.
    """

    mix_stages: int = 3
    model: ResNet

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, ResNet):
            raise ValueError(f"StagedResNet wraps timm's ResNet; got {type(model).__name__}")
        super().__init__(model)

    def forward(self, x: Tensor, mix: Mix | None = None, mix_stage: int = 0) -> Tensor:
        """Logits; with ``mix``, features entering stage ``mix_stage`` are mixed first."""
        if mix is not None:
            _check_stage(self, mix_stage)
            if mix_stage == 0:
                x = mix(x)
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        for stage, layer in enumerate(("layer1", "layer2", "layer3", "layer4"), start=1):
            x = m.get_submodule(layer)(x)
            if mix is not None and stage == mix_stage:
                x = mix(x)
        return m.forward_head(x)


def _wrap(model: nn.Module) -> TimmBackbone:
    return StagedResNet(model) if isinstance(model, ResNet) else TimmBackbone(model)


def _cifar_resnet(timm_name: str, num_classes: int, **options: Any) -> StagedResNet:
    """A timm ResNet with a 3x3 stride-1 conv stem and no max-pool (DM paper, section 4.1).

    On 32 px images the ImageNet stem (7x7 stride-2 conv, then max-pool) would leave 8x8 maps
    for ``layer1``; the CIFAR stem keeps the full resolution there.
    """
    model = timm.create_model(timm_name, num_classes=num_classes, **options)
    stem = model.conv1
    if not isinstance(stem, nn.Conv2d):
        raise ValueError(
            f"the CIFAR stem replaces a single conv stem; {timm_name} with {options} has a "
            f"{type(stem).__name__} (leave out stem_type)"
        )
    model.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's
    model.maxpool = nn.Identity()
    return StagedResNet(model)


# --- Wide-ResNet ---------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
    """Pre-activation basic block of WRN: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus a skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        drop_rate: float,
        leaky_slope: float = 0.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.leaky_slope = leaky_slope
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """The block's output, ``x`` plus the residual."""
        out = F.leaky_relu(self.bn1(x), self.leaky_slope)
        # A projection shortcut takes the pre-activated input, as in the WRN reference code.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.leaky_relu(self.bn2(self.conv1(out)), self.leaky_slope)
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k in the CIFAR layout of Zagoruyko & Komodakis (2016).

    A 3x3 conv with 16 channels, three groups of (depth - 4) / 6 pre-activation basic blocks
    with widths 16k, 32k, 64k and strides 1, 2, 2, a final BN-ReLU, global average pooling and
    a linear head. WRN-28-2 has 1.47M parameters, WRN-28-8 23.4M, WRN-28-10 36.5M. ManifoldMix
    stages: 0 = input, 1 / 2 = output of group 1 / 2. ``leaky_slope`` and ``bn_momentum`` (ReLU
    and PyTorch's 0.1 by default) give TorchSSL's variant (models/nets/wrn.py: leaky ReLU 0.1,
    momentum 0.001), which also has conv biases, batch-norm eps 1e-3 and a Xavier-initialised
    head that this one does not.
    """

    classifier_name = "fc"
    mix_stages: int = 3

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        leaky_slope: float = 0.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.leaky_slope = leaky_slope
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1; got {depth}")
        blocks = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes, self.num_features = num_classes, widths[-1]
        self.stem = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        groups, in_channels = [], 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            block = partial(
                WideBasicBlock,
                drop_rate=drop_rate,
                leaky_slope=leaky_slope,
                bn_momentum=bn_momentum,
            )
            first = block(in_channels, width, stride)
            rest = [block(width, width, 1) for _ in range(blocks - 1)]
            groups.append(nn.Sequential(first, *rest))
            in_channels = width
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(widths[-1], momentum=bn_momentum)
        self.fc = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, mix: Mix | None = None, mix_stage: int = 0) -> Tensor:
        """Logits; with ``mix``, features entering stage ``mix_stage`` are mixed first."""
        if mix is not None:
            _check_stage(self, mix_stage)
            if mix_stage == 0:
                x = mix(x)
        x = self.stem(x)
        for stage, group in enumerate(self.groups, start=1):
            x = group(x)
            if mix is not None and stage == mix_stage:
                x = mix(x)
        return self.fc(F.leaky_relu(self.bn(x), self.leaky_slope).mean(dim=(2, 3)))


# --- SmallNet ------------------------------------------------------------------------------


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
    """Three conv blocks (width w, 2w, 4w, each halving the resolution), pooling, a linear head.

    Not a network of the paper: it makes CPU runs, the demo and tests fast.
    """

    classifier_name = "head"

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

    def forward(self, x: Tensor, mix: Mix | None = None, mix_stage: int = 0) -> Tensor:
        """Logits; with ``mix``, features entering stage ``mix_stage`` are mixed first."""
        if mix is not None:
            _check_stage(self, mix_stage)
        for index, stage in enumerate(self.stages):
            if mix is not None and index == mix_stage:
                x = mix(x)
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))


# --- building and loading ------------------------------------------------------------------

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": partial(_cifar_resnet, "resnet18"),
    "resnext50_cifar": partial(_cifar_resnet, "resnext50_32x4d"),
    "wrn28_2": partial(WideResNet, depth=28, widen_factor=2),
    "wrn28_8": partial(WideResNet, depth=28, widen_factor=8),
    "smallnet": SmallNet,
}

DMSWEEP_BACKBONES = tuple(_BUILDERS)
"""The names ``build_backbone`` builds itself; every other name must be a timm model name."""


def build_backbone(
    name: str,
    num_classes: int,
    image_size: int,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    **options: Any,
) -> nn.Module:
    """A backbone by name with the ManifoldMix signature, randomly initialised by default.

    ``weights`` loads a local file (see ``load_weights``); ``pretrained`` asks timm to download
    its weights (timm names only, needs network). ``options`` go to the network's constructor
    (timm's, e.g. ``drop_path_rate``, or ``drop_rate`` for Wide-ResNet), only those of
    ``BACKBONE_OPTIONS`` (a ValueError names the others); hub names (``hf-hub:``) are refused.
    Fixed-size timm models (ViT, DeiT, Swin) are built for ``image_size``; the other networks
    take any size.

    Args:
        name: a dmsweep backbone (``resnet18_cifar``, ``wrn28_8``, ...) or a timm model name.
        num_classes: outputs of the classifier head.
        image_size: the training image size (fixed-size timm models are built for it).
        weights: a local state dict or timm checkpoint to start from.
        pretrained: timm's own weights (needs network; off in tests and the demo).
        options: keyword arguments of the network's constructor.

    Example::

        model = build_backbone("resnet18_cifar", num_classes=100, image_size=32)
        logits = model(torch.randn(8, 3, 32, 32))  # (8, 100)

    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    if weights is not None and pretrained:
        raise ValueError("pass either weights (a local file) or pretrained, not both")
    problems = check_options(options)
    if problems:
        raise ValueError(f"backbone {name}: " + "; ".join(problems))
    if is_hub_name(name):
        raise ValueError(
            f"backbone {name!r}: hub models are not built here; download the weights once and "
            "pass a timm name with weights=<local file>"
        )
    if name in _BUILDERS:
        if pretrained:
            raise ValueError(f"{name} has no downloadable weights; pass weights=<local file>")
        model = _BUILDERS[name](num_classes, **options)
    elif timm.is_model(name):
        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size:
            # Position embeddings and attention windows are sized for one input size.
            options.setdefault("img_size", image_size)
        model = _wrap(
            timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **options)
        )
    else:
        raise ValueError(
            f"unknown backbone {name!r}: dmsweep builds {', '.join(DMSWEEP_BACKBONES)}; "
            "any other name must be a timm model name (see timm.list_models())"
        )
    if weights is not None:
        load_weights(model, weights)
    return model


# timm's checkpoint keys, in its order of preference (EMA weights first).
