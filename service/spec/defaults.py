"""The paper's default hyperparameters per method family, as data, each with its source.

A sweep spec that names no alpha, eta, xi or t gets these (``resolve_hyperparameters``); the
spec's top-level ``hyperparameters`` and its per-cell ``overrides`` take precedence over them.

The rule for every setting that stands for the paper: where the configuration that produced a
paper number can be identified (A.3: "We follow the basic hyper-parameter settings (e.g., alpha)
for mixup variants in OpenMixup"), follow it; otherwise follow the paper's text. Where both exist
and disagree, ``search_spaces/paper_results/parity.csv`` records both with their sources and
which one was followed and why (its README renders the table; ``tests/test_parity.py`` holds it).
OpenMixup paths below are relative to https://github.com/Westlake-AI/openmixup.

Sources:

* alpha of the MCE / MBCE baselines: OpenMixup's benchmark of the cell's data set (the "Beta
  alpha" columns of docs/en/mixup_benchmarks/*.md), whose numbers are the MCE columns of the
  paper's Tables 1, 2 and 5 (``BASELINE_ALPHA``).
* alpha with DM: A.3, "we use alpha = 0.2 and alpha = 2 for the static and dynamic methods when
  use the proposed DM", except where OpenMixup's DM configuration of the cell sets another
  (``DM_ALPHA_CONFIGS``: ManifoldMix on CIFAR-100).
* DM(CE) eta: A.3, "Hyper-parameter settings"; the eta grid of Sec. 4.5 (1) picked 0.1 for static
  and 1 for dynamic policies on ImageNet-1k. OpenMixup's DM configs weight the decoupled term
  differently (``eta_weight`` with a mode and a lambda power), which ``dm_ce`` has no parameter
  for: the text's eta is followed (parity.csv says so per cell).
* DM(BCE) xi and t: appendix A.3 (given for ImageNet-1k, used everywhere here) and Sec. 4.5 (2);
  OpenMixup has no DM(BCE) configuration.
"""

from __future__ import annotations

from trainers.vocabulary import (
    AS_DEFAULT_ALPHA,
    AS_DEFAULT_ETA,
    DM_LOSSES,
    DYNAMIC_POLICIES,
    HOST_MIXUP_ALPHA,
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

# --- alpha with DM ---------------------------------------------------------------------------
# A.3: "we use alpha = 0.2 and alpha = 2 for the static and dynamic methods when use the
# proposed DM".
DM_ALPHA_STATIC = 0.2
DM_ALPHA_DYNAMIC = 2.0
# OpenMixup's DM(CE) configurations of Table 1's 800-epoch CIFAR-100 runs set other alphas for
# ManifoldMix; the configuration wins over A.3's text (the rule above). Every other DM config of
# configs/classification/cifar100/mixups/decouple/{r18,rx50}/ sets A.3's 0.2.
DM_ALPHA_CONFIGS: dict[tuple[str, str, str], float] = {
    # configs/classification/cifar100/mixups/decouple/r18/
    #   r18_manifoldmix_CE_soft_decouple_a0_5_ep800.py
    ("cifar100", "resnet18_cifar", "manifoldmix"): 0.5,
    # configs/classification/cifar100/mixups/decouple/rx50/
    #   rx50_manifoldmix_CE_soft_decouple_a2_ep800.py
    ("cifar100", "resnext50_cifar", "manifoldmix"): 2.0,
}

# --- alpha of the MCE / MBCE baselines -------------------------------------------------------
# Each OpenMixup benchmark's "Beta alpha" column. ResizeMix's 1 feeds OpenMixup's `use_alpha=True`
# variant; dmsweep's ResizeMix takes no alpha (NO_ALPHA).
BASELINE_ALPHA: dict[str, dict[str, float]] = {
    # docs/en/mixup_benchmarks/Mixup_cifar.md, CIFAR-100 (its 800-epoch ResNet-18 and its
    # WRN-28-8 numbers are Table 1's MCE column); configs generated from
    # configs/classification/cifar100/mixups/basic/{r18,rx50,wrn28_8}_mixups_CE_none.py.
    "cifar": {
        "mixup": 1.0,
        "cutmix": 0.2,
        "manifoldmix": 2.0,
        "saliencymix": 0.2,
        "fmix": 0.2,
        "resizemix": 1.0,
        "puzzlemix": 1.0,
        "automix": 2.0,
        "samix": 2.0,
    },
    # docs/en/mixup_benchmarks/Mixup_imagenet.md, "Tiny-ImageNet Dataset" (Table 1's
    # Tiny-ImageNet MCE column); configs/classification/tiny_imagenet/mixups/basic/.
    "tiny_imagenet": {
        "mixup": 1.0,
        "cutmix": 1.0,
        "manifoldmix": 0.2,
        "saliencymix": 1.0,
        "fmix": 1.0,
        "resizemix": 1.0,
        "puzzlemix": 1.0,
        "automix": 2.0,
        "samix": 2.0,
    },
    # docs/en/mixup_benchmarks/Mixup_imagenet.md, PyTorch-style 100 epochs (Table 2's MCE
    # column); ResNet-18 exceptions in BASELINE_ALPHA_BACKBONE. The DeiT and RSB A3 benchmarks
    # use other alphas: their specs set them.
    "imagenet": {
        "mixup": 0.2,
        "cutmix": 1.0,
        "manifoldmix": 0.2,
        "saliencymix": 1.0,
        "fmix": 1.0,
        "resizemix": 1.0,
        "puzzlemix": 1.0,
        "automix": 2.0,
        "samix": 2.0,
    },
    # docs/en/mixup_benchmarks/Mixup_downstream.md, "Transfer Learning on Small-scale
    # Fine-grained Datasets" (Table 5's MCE columns); configs/classification/{cub200,aircrafts}/.
    # Stanford Cars, which OpenMixup does not benchmark, takes the same.
    "finegrained": {
        "mixup": 0.2,
        "cutmix": 1.0,
        "manifoldmix": 0.5,
        "saliencymix": 0.2,
        "fmix": 0.2,
        "resizemix": 1.0,
        "puzzlemix": 1.0,
        "automix": 2.0,
        "samix": 2.0,
    },
}
# Which benchmark a data set's baselines follow; any other (CIFAR-10, synthetic) takes "cifar".
BENCHMARK_OF_DATASET: dict[str, str] = {
    "tiny_imagenet": "tiny_imagenet",
    "imagenet": "imagenet",
    "cub200": "finegrained",
    "aircraft": "finegrained",
    "cars": "finegrained",
}
# Mixup_imagenet.md: "Since ResNet-18 might be under-fitted on ImageNet-1k, we adopt alpha=0.2 for
# some cutting-based mixups (CutMix, SaliencyMix, FMix, ResizeMix) based on ResNet-18."
BASELINE_ALPHA_BACKBONE: dict[tuple[str, str, str], float] = {
    ("imagenet", "resnet18", method): 0.2
    for method in ("cutmix", "saliencymix", "fmix", "resizemix")
}

# Every method a trial can run (the dynamic policies among them), each once.
KNOWN_METHODS = (*METHODS, *(m for m in DYNAMIC_POLICIES if m not in METHODS))


def baseline_alpha(dataset: str, backbone: str, method: str) -> float:
    """The MCE / MBCE baseline's alpha of one cell: its OpenMixup benchmark's."""
    key = (dataset, backbone, method)
    if key in BASELINE_ALPHA_BACKBONE:
        return BASELINE_ALPHA_BACKBONE[key]
    return BASELINE_ALPHA[BENCHMARK_OF_DATASET.get(dataset, "cifar")][method]


def dm_alpha(dataset: str, backbone: str, method: str) -> float:
    """The alpha of a DM cell: OpenMixup's DM configuration where it has one, else A.3's."""
    key = (dataset, backbone, method)
    if key in DM_ALPHA_CONFIGS:
        return DM_ALPHA_CONFIGS[key]
    return DM_ALPHA_DYNAMIC if method in DYNAMIC else DM_ALPHA_STATIC


# The asymmetric strategy in semi-supervised learning (Sec. 3.2) has no settings in the paper:
# its alpha is the host algorithm's own Mixup alpha (TorchSSL's config/mixmatch/*.yaml 0.5,
# config/remixmatch/*.yaml 0.75), Mixup's usual 1 for hosts without one (Pseudo-Label, UDA,
# FixMatch, FlexMatch), for MCE and DM(CE) alike so that "+Mixup" and "+DM" differ in the loss
# alone; eta is the static policies' 0.1 (A.3).
SEMI_SUPERVISED_ALPHA = HOST_MIXUP_ALPHA
SEMI_SUPERVISED_DEFAULT_ALPHA = AS_DEFAULT_ALPHA
SEMI_SUPERVISED_ETA = AS_DEFAULT_ETA


def semi_supervised_hyperparameters(algorithm: str, method: str, loss: str) -> dict[str, float]:
    """AS's defaults for a semi-supervised cell: ``alpha`` where it mixes, ``eta`` for dm_ce."""
    values: dict[str, float] = {}
    if takes_alpha(method):
        values["alpha"] = SEMI_SUPERVISED_ALPHA.get(algorithm, SEMI_SUPERVISED_DEFAULT_ALPHA)
    if loss == "dm_ce":
        values["eta"] = SEMI_SUPERVISED_ETA
    return values


def resolve_hyperparameters(
    dataset: str, backbone: str, method: str, loss: str
) -> dict[str, float]:
    """The paper's defaults for one supervised cell: a subset of ``alpha``, ``eta``, ``xi``, ``t``.

    Only the keys that apply are returned: ``eta`` for dm_ce, ``xi`` and ``t`` for dm_bce
    (appendix A.3), ``alpha`` for methods that take one (``dm_alpha`` with DM losses, the data
    set's OpenMixup benchmark otherwise: ``baseline_alpha``). Unknown data sets and backbones get
    the CIFAR-100 / ImageNet-1k values; an unknown method or loss raises a ValueError listing the
    allowed ones.
    """
    if method not in KNOWN_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(KNOWN_METHODS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    dynamic = method in DYNAMIC
    values: dict[str, float] = {}
    if takes_alpha(method):
        if loss in DM_LOSSES:
            values["alpha"] = dm_alpha(dataset, backbone, method)
        else:
            values["alpha"] = baseline_alpha(dataset, backbone, method)
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
for _benchmark, _alphas in BASELINE_ALPHA.items():
    assert set(_alphas) >= (STATIC | DYNAMIC) - NO_ALPHA, (
        f"a baseline alpha per policy: {_benchmark}"
    )
