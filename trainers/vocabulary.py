"""The words of the grid and the rules tied to them, written once for trainers/ and service/.

Which losses exist and which hyperparameters each takes, which methods take no alpha, what each
hyperparameter may be, what a search may tune, the order tables show methods and losses in, and
the summary metrics a training run reports: every other module imports these. Plain data, no
torch: the report and the sweep service read it without loading a model.

Adding a loss: a line in ``LOSS_HYPERPARAMETERS`` (and ``SOFTMAX_LOSSES`` if it is a softmax
loss) and its implementation in ``trainers.losses`` / ``trainers.objectives``. Adding a mixing
policy: its family below (``STATIC_POLICIES`` or ``DYNAMIC_POLICIES``, ``INTERPOLATION_BASED``
when it interpolates), ``METHOD_ORDER``, and its module in ``trainers.mixing``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import annotated_types

# --- losses (Sec. 2.1, 3.1, 3.3) ------------------------------------------------------------
# The grid's `loss` axis, in the order tables show it, with the hyperparameters each loss takes:
# plain CE (no mixing), MCE and DM(CE) (eta weighs the decoupled term, Eq. 2), one- and two-hot
# MBCE, and DM(BCE) (xi and t rescale the mixed labels, Eq. 3).
LOSS_HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "ce": (),
    "mce": (),
    "dm_ce": ("eta",),
    "mbce": (),
    "mbce_two": (),
    "dm_bce": ("xi", "t"),
}
LOSSES = tuple(LOSS_HYPERPARAMETERS)
SOFTMAX_LOSSES = frozenset({"ce", "mce", "dm_ce"})
DM_LOSSES = frozenset({"dm_ce", "dm_bce"})
# (base loss, its decoupled form): Table 1's comparison (MCE) and Sec. 3.3's (MBCE).
GAIN_PAIRS = (("mce", "dm_ce"), ("mbce", "dm_bce"))
LOSS_HYPERPARAMETER_NAMES = ("eta", "xi", "t")

# --- mixing methods (appendix A.3) ----------------------------------------------------------
# "static methods denote Mixup, CutMix, ManifoldMix, SaliencyMix, FMix, ResizeMix, and dynamic
# methods denote PuzzleMix, AutoMix, and SAMix". PuzzleMix runs in trainers.mixing.methods,
# AutoMix and SAMix (a Mix Block trained beside the backbone) in trainers.mixing.learned.
STATIC_POLICIES = ("mixup", "cutmix", "manifoldmix", "saliencymix", "fmix", "resizemix")
DYNAMIC_POLICIES = ("puzzlemix", "automix", "samix")
IMPLEMENTED_DYNAMIC_POLICIES = DYNAMIC_POLICIES
# Mixup and ManifoldMix interpolate; every other policy cuts and pastes (A.3: "cutting-based
# methods denote the rest", PuzzleMix included: its mask is a labelling of blocks).
INTERPOLATION_BASED = frozenset({"mixup", "manifoldmix"})
# The grid's `method` axis: no mixing, Mixup/CutMix switching (DeiT and RSB A3, Table 10), and
# every implemented policy.
METHODS = ("vanilla", "mixup_cutmix", *STATIC_POLICIES, *IMPLEMENTED_DYNAMIC_POLICIES)
# Methods whose trial takes no ``mixing.alpha``: vanilla does not mix; ResizeMix draws its scale
# from U[0.1, 0.8] (trainers.mixing.resizemix); mixup_cutmix uses the recipe's two alphas.
NO_ALPHA = frozenset({"vanilla", "resizemix", "mixup_cutmix"})
# Table 1's row order, then the methods the paper has no row for.
METHOD_ORDER = (
    "vanilla",
    "mixup",
    "cutmix",
    "manifoldmix",
    "saliencymix",
    "fmix",
    "puzzlemix",
    "resizemix",
    "automix",
    "samix",
    "mixup_cutmix",
)


def takes_alpha(method: str) -> bool:
    """Whether a trial of ``method`` reads ``mixing.alpha`` (see ``NO_ALPHA``)."""
    return method not in NO_ALPHA


# --- what each setting may be ---------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """An interval a setting must lie in: ``low < v`` (or ``<=``), ``v <= high`` when given."""

    low: float
    low_inclusive: bool
    high: float | None = None

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and (self.high is None or value <= self.high)

    @property
    def interval(self) -> str:
        """``(0, 1]``, or ``(0, inf)`` without an upper end."""
        opening = "[" if self.low_inclusive else "("
        closing = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{opening}{self.low:g}, {closing}"

    def constraint(self) -> annotated_types.Interval:
        """The same interval for a pydantic field: ``Annotated[float, bounds.constraint()]``."""
        low = {"ge": self.low} if self.low_inclusive else {"gt": self.low}
        return annotated_types.Interval(**low, le=self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        return f"in {self.interval}"

    def problem(self, name: str, value: object) -> str | None:
        """Why ``value`` is not allowed for the setting ``name``, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number; got {value!r}"
        if not math.isfinite(value):
            return f"{name} must be a finite number (no NaN or infinity); got {value!r}"
        if not self.admits(value):
            return f"{name} must be {self}; got {value!r}"
        return None


# alpha is Beta(alpha, alpha)'s; eta weighs the decoupled term (Eq. 2); xi truncates and t bends
# DM(BCE)'s label rescaling (Eq. 3: the paper writes 0 <= xi < 1, but its defaults and grid use
# xi = 1, and xi = 0 divides by zero, so (0, 1]).
BOUNDS: dict[str, Bounds] = {
    "alpha": Bounds(0, low_inclusive=False),
    "eta": Bounds(0, low_inclusive=True),
    "xi": Bounds(0, low_inclusive=False, high=1),
    "t": Bounds(0, low_inclusive=True),
    "lr": Bounds(0, low_inclusive=False),
    "weight_decay": Bounds(0, low_inclusive=True),
}
# The hyperparameters of a cell: the mixing policy's alpha and the loss's.
HYPERPARAMETERS = ("alpha", *LOSS_HYPERPARAMETER_NAMES)
# What a sweep's search may tune (Sec. 4.5 tunes eta, xi and t; alpha, lr and weight decay too).
SearchableName = Literal["eta", "xi", "t", "alpha", "lr", "weight_decay"]

# --- the training loop's contract -----------------------------------------------------------
# The summary metrics of a run's last epoch: the median top-1 of the last 10 epochs (the paper's
# number, Sec. 4), the best top-1, and the FGSM error of Table 8 when asked for.
# top1_ema_best: only where the recipe keeps an EMA of the weights (DeiT, Table 10).
SUMMARY_METRICS = ("top1_median_last10", "top1_best", "top1_ema_best", "fgsm_error")
PAPER_METRIC = "top1_median_last10"
# The metric a search optimises by default: each epoch's validation top-1.
DEFAULT_SEARCH_METRIC = "val_top1"

# --- algorithms (Sec. 4.4, Table 7) ---------------------------------------------------------
# The grid's `algorithm` axis: plain supervised training (every table but 6, 7 and 9) and the
# semi-supervised algorithms of Table 7, in its row order.
SEMI_SUPERVISED = ("pseudo_label", "mixmatch", "remixmatch", "uda", "fixmatch", "flexmatch")
# The baseline of the semi-supervised tables: the labelled images alone, trained by the same
# step-based loop (steps, schedule, EMA) as the algorithms (TorchSSL's fullysupervised, on the
# labelled images only).
LABELLED_ONLY = "labelled_only"
# The transfer-learning algorithms of Table 6 (Sec. 4.3), in its row order: Fine-Tuning, BSS,
# Co-Tuning and Self-Tuning (trainers.transfer), each from a pretrained backbone.
TRANSFER = ("fine_tuning", "bss", "co_tuning", "self_tuning")
STEP_BASED = (LABELLED_ONLY, *SEMI_SUPERVISED, *TRANSFER)
ALGORITHMS = ("supervised", *STEP_BASED)
# Where a semi-supervised algorithm reads the cell's method and loss. The pseudo-labelling
# algorithms take the cell's policy for the asymmetric strategy's term (Sec. 3.2; FixMatch's
# "+Mixup" row with mce, "+DM" with dm_ce), or none (vanilla / ce: the algorithm alone);
# MixMatch and ReMixMatch mix with their own Mixup, so their cells say mixup, and MixMatch's
# "+DM" row is dm_ce (AS's folding and the decoupled term). ReMixMatch has no +DM row.
# The policies of the asymmetric strategy's term: every static policy (ManifoldMix mixes the
# features entering a drawn stage, as in supervised training).
AS_POLICIES = STATIC_POLICIES
SEMI_SUPERVISED_CELLS: dict[str, dict[str, tuple[str, ...]]] = {
    **{
        name: {"vanilla": ("ce",), **{policy: ("mce", "dm_ce") for policy in AS_POLICIES}}
        for name in ("pseudo_label", "uda", "fixmatch", "flexmatch")
    },
    LABELLED_ONLY: {"vanilla": ("ce",)},
    "mixmatch": {"mixup": ("mce", "dm_ce")},
    "remixmatch": {"mixup": ("mce",)},
    # Sec. 4.3 adds DM(CE) and AS to Fine-Tuning, Co-Tuning and Self-Tuning (Table 6's "+DM",
    # Self-Tuning's "+Mixup" with mce); every transfer algorithm takes the term the same way.
    **{
        name: {"vanilla": ("ce",), **{policy: ("mce", "dm_ce") for policy in AS_POLICIES}}
        for name in TRANSFER
    },
}
# Which side of lambda the asymmetric strategy's labelled image takes (a grid axis, Table 9's
# ablation): labelled_minor, lambda <= 0.5 (Sec. 3.2, the default); labelled_major,
# lambda >= 0.5; none, no AS term: the cell's policy and loss mix labelled images among
# themselves (Table 9's "+MCE"; the algorithms of LABELLED_MIXING only).
AsSide = Literal["labelled_minor", "labelled_major", "none"]
AS_SIDES: tuple[AsSide, ...] = get_args(AsSide)
DEFAULT_AS_SIDE: AsSide = "labelled_minor"
# The algorithms whose cells may mix labelled images among themselves (as_side none): Self-Tuning,
# whose DM authors' variant (OpenMixup's DMixTuning) has that term.
LABELLED_MIXING = frozenset({"self_tuning"})
# The algorithms whose cell's policy and loss are an AS term (SEMI_SUPERVISED_CELLS' policies)
# or MixMatch's fold: where as_side means something.
AS_ALGORITHMS = frozenset({"pseudo_label", "uda", "fixmatch", "flexmatch", "mixmatch", *TRANSFER})
# The asymmetric strategy's settings where a cell gives none (the paper gives none for SSL):
# the host's own Mixup alpha (TorchSSL's config/mixmatch/*.yaml 0.5, config/remixmatch/*.yaml
# 0.75), Mixup's usual 1 for the hosts without one, and the static policies' eta 0.1 (A.3).
HOST_MIXUP_ALPHA = {"mixmatch": 0.5, "remixmatch": 0.75}
AS_DEFAULT_ALPHA = 1.0
AS_DEFAULT_ETA = 0.1
# The metric of the semi-supervised tables: the best top-1 of the EMA model (Sec. 4 reports the
# best top-1 for SSL; TorchSSL evaluates the EMA of the weights).
SEMI_SUPERVISED_METRIC = "top1_ema_best"
# The metric of the transfer tables (6 and 9): the best top-1 of the model itself (Sec. 4:
# the best top-1 for semi-supervised settings; Self-Tuning's code keeps no EMA of the weights).
TRANSFER_METRIC = "top1_best"
