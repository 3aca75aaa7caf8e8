"""Where AutoMix's and SAMix's Mix Block reads a backbone's features: ``mix_block_tap(model)``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from trainers.backbones import SmallNet, StagedResNet, TimmBackbone, WideResNet

FeatureLayout = Literal["nchw", "nhwc", "tokens"]


@dataclass(frozen=True)
class FeatureTap:
    """Where AutoMix's and SAMix's Mix Block reads a network's features.

    ``module``: the name of the submodule whose output is read (a forward hook on it);
    ``layout``: how that output holds a feature map: ``nchw`` (convolutional stages), ``nhwc``
    (timm's Swin stages) or ``tokens`` ((N, prefix + h * w, C), ViT blocks, the class token
    first); ``source``: the OpenMixup setting the choice mirrors.
    """

    module: str
    layout: FeatureLayout
    source: str

    def feature_map(self, output: Tensor, prefix_tokens: int = 0) -> Tensor:
        """The hooked ``output`` as an (N, C, h, w) map."""
        if self.layout == "nchw":
            return output
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        tokens = output[:, prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} patch tokens make no square map")
        return tokens.transpose(1, 2).reshape(output.shape[0], -1, side, side)


def mix_block_tap(model: nn.Module) -> FeatureTap:
    """The features the Mix Block reads in ``model``, as OpenMixup's AutoMix configs choose them.

    * ResNet / ResNeXt (CIFAR and ImageNet stems): the output of ``layer3`` (``mask_layer=2``,
      ``out_indices=(2, 3)``: 256 channels for ResNet-18, 1024 for ResNet-50 and ResNeXt-50),
      configs/classification/{cifar100,imagenet}/automix/basic/r18_*.py, rx50_*.py, r50_*.py;
    * Wide-ResNet: the output of group 2 (``mask_layer=1``, "stage-2 for MixBlock": 256 channels
      for WRN-28-8), configs/classification/cifar100/automix/basic/wrn28_8_*.py;
    * DeiT: the tokens after block 6 of 12 (``out_indices=(5, 11)``, "use 6-layer for
      MixBlock"), configs/classification/imagenet/automix/deit/deit_s_l6_*.py;
    * Swin: the output of the third stage's patch merging, 768 channels at 1/32 (OpenMixup's
      ``mask_layer=2`` with ``in_channels=768``; timm merges at the start of the next stage),
      configs/classification/imagenet/automix/swin/swin_t_l2_*.py;
    * SmallNet (not a network of the paper): the output of its middle block.
    """
    if isinstance(model, StagedResNet):
        return FeatureTap("model.layer3", "nchw", "mask_layer=2 (ResNet stage 3)")
    if isinstance(model, WideResNet):
        return FeatureTap("groups.1", "nchw", "mask_layer=1 (WRN group 2)")
    if isinstance(model, SmallNet):
        return FeatureTap(f"stages.{len(model.stages) // 2}", "nchw", "SmallNet's middle block")
    if isinstance(model, TimmBackbone):
        blocks = getattr(model.model, "blocks", None)
        layers = getattr(model.model, "layers", None)
        if isinstance(blocks, nn.Sequential) and len(blocks) >= 2:
            middle = len(blocks) // 2 - 1
            return FeatureTap(f"model.blocks.{middle}", "tokens", "out_indices=(5, 11) (DeiT-S)")
        if isinstance(layers, nn.Sequential) and hasattr(layers[-1], "downsample"):
            last = len(layers) - 1
            return FeatureTap(
                f"model.layers.{last}.downsample", "nhwc", "mask_layer=2, in_channels=768 (Swin-T)"
            )
    raise ValueError(
        f"automix and samix read a feature map of the backbone, which dmsweep knows for ResNets, "
        f"ResNeXts, Wide-ResNets, DeiT, Swin and smallnet; not for {type(model).__name__}"
    )
