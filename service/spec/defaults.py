"""The paper's default hyperparameters per method family, as data, each with its source.

A sweep spec that names no alpha, eta, xi or t gets these (``resolve_hyperparameters``); the
spec's top-level ``hyperparameters`` and its per-cell ``overrides`` take precedence over them.

Sources:

* DM(CE) eta and the alphas used with DM: appendix A.3, "Hyper-parameter settings"; the eta
  grid of Sec. 4.5 (1) picked 0.1 for static and 1 for dynamic policies on ImageNet-1k.
* DM(BCE) xi and t: appendix A.3 (given for ImageNet-1k, used everywhere here) and Sec. 4.5 (2).
* alpha of the MCE / MBCE baselines: A.3 says the paper follows OpenMixup's settings; the values
  are those of OpenMixup's CIFAR-100 mixup benchmark (see ``BASELINE_ALPHA``).
"""

from __future__ import annotations

from trainers.vocabulary import (
    DM_LOSSES,
    DYNAMIC_POLICIES,
    INTERPOLATION_BASED,
    LOSSES,
    METHODS,
    NO_ALPHA,
    STATIC_POLICIES,
    takes_alpha,
)

# The policy families of appendix A.3 (trainers.vocabulary), as the rules below use them.
STATIC = frozenset(STATIC_POLICIES)
DYNAMIC = frozenset(DYNAMIC_POLICIES)

# --- DM(CE): eta (appendix A.3) --------------------------------------------------------------
# "For CIFAR-100 and ImageNet-1k, static methods use eta = 0.1 and dynamic methods use eta = 1."
ETA_STATIC = 0.1
ETA_DYNAMIC = 1.0
# "For Tiny-ImageNet and fine-grained datasets, static methods use eta = 1 based on ResNet-18
# while eta = 0.1 based on ResNeXt-50; dynamic methods use eta = 1."
PER_BACKBONE_ETA_DATASETS = frozenset({"tiny_imagenet", "cub200", "aircraft", "cars"})
PER_BACKBONE_ETA_STATIC: dict[str, float] = {
    "resnet18": 1.0,
    "resnet18_cifar": 1.0,
    "resnext50_32x4d": 0.1,
    "resnext50_cifar": 0.1,
}
# A.3 covers neither CIFAR-10, synthetic data, Wide-ResNets nor the other backbones on
# Tiny-ImageNet / fine-grained sets: those cells take the CIFAR-100 / ImageNet-1k values above
# (the ones Sec. 4.5 found on ImageNet), the paper's general rule.

# --- DM(BCE): xi and t (appendix A.3, Sec. 4.5 (2)) ------------------------------------------
# Given for ImageNet-1k and used everywhere: "cutting-based methods use t = 1 and xi = 0.8, while
# interpolation-based methods use t = 0.5 and xi = 1". A.3 calls every policy but Mixup and
# ManifoldMix cutting-based; vanilla and mixup_cutmix fall in that "rest" as well.
BCE_CUTTING = {"xi": 0.8, "t": 1.0}
BCE_INTERPOLATION = {"xi": 1.0, "t": 0.5}

# --- alpha -----------------------------------------------------------------------------------
# With DM (A.3): "we use alpha = 0.2 and alpha = 2 for the static and dynamic methods when use
# the proposed DM". (OpenMixup's own DM configs deviate for ManifoldMix, e.g.
# configs/classification/cifar100/mixups/decouple/r18/r18_manifoldmix_CE_soft_decouple_a0_5_ep800.py
# uses 0.5; the paper's text is followed here.)
DM_ALPHA_STATIC = 0.2
DM_ALPHA_DYNAMIC = 2.0
# Without DM (MCE, MBCE baselines): each method's alpha in OpenMixup's CIFAR-100 benchmark,
# docs/en/mixup_benchmarks/Mixup_cifar.md (the "Beta alpha" column; its 800-epoch ResNet-18 MCE
# accuracies are the MCE column of the paper's Table 1), whose configs are generated from
# configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py (and rx50_ / wrn28_8_)
# with `mix_mode` and `alpha` set per method. ResizeMix's 1 there feeds OpenMixup's
# `use_alpha=True` variant; dmsweep's ResizeMix takes no alpha (NO_ALPHA).
BASELINE_ALPHA: dict[str, float] = {
    "mixup": 1.0,
    "cutmix": 0.2,
    "manifoldmix": 2.0,
    "saliencymix": 0.2,
    "fmix": 0.2,
    "resizemix": 1.0,
    "puzzlemix": 1.0,
    "automix": 2.0,
    "samix": 2.0,
}

KNOWN_METHODS = (*METHODS, *DYNAMIC_POLICIES)


def resolve_hyperparameters(
    dataset: str, backbone: str, method: str, loss: str
) -> dict[str, float]:
    """The paper's defaults for one cell: a subset of ``alpha``, ``eta``, ``xi``, ``t``.

    Only the keys that apply are returned: ``eta`` for dm_ce, ``xi`` and ``t`` for dm_bce
    (appendix A.3), ``alpha`` for methods that take one (A.3 with DM losses, OpenMixup's
    CIFAR-100 benchmark otherwise). Unknown data sets and backbones get the CIFAR-100 /
    ImageNet-1k values; an unknown method or loss raises a ValueError listing the allowed ones.
    """
    if method not in KNOWN_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(KNOWN_METHODS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    dynamic = method in DYNAMIC
    values: dict[str, float] = {}
    if takes_alpha(method):
        if loss in DM_LOSSES:
            values["alpha"] = DM_ALPHA_DYNAMIC if dynamic else DM_ALPHA_STATIC
        else:
            values["alpha"] = BASELINE_ALPHA[method]
    if loss == "dm_ce":
        if dynamic:
            values["eta"] = ETA_DYNAMIC
        elif dataset in PER_BACKBONE_ETA_DATASETS:
            values["eta"] = PER_BACKBONE_ETA_STATIC.get(backbone, ETA_STATIC)
        else:
            values["eta"] = ETA_STATIC
    if loss == "dm_bce":
        values.update(BCE_INTERPOLATION if method in INTERPOLATION_BASED else BCE_CUTTING)
    return values


# Every policy dmsweep implements is classified above; a new one must be added to a family.
assert set(BASELINE_ALPHA) >= (STATIC | DYNAMIC) - NO_ALPHA, "a baseline alpha for every policy"
