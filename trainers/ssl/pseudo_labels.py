"""Pure functions shared by the pseudo-labelling algorithms of Table 7 (Sec. 4.4).

Pseudo-labels and their confidence masks (FixMatch, Sohn et al. 2020, its unlabelled loss;
every algorithm here), temperature sharpening (MixMatch's Sharpen, Berthelot et al. 2019; UDA's
soft targets), FlexMatch's curriculum thresholds (Zhang et al. 2021, curriculum pseudo
labelling with threshold warm-up and non-linear mapping), UDA's training-signal annealing (Xie
et al. 2020, TSA), and Pseudo-Label's linear warm-up of the unsupervised weight (as TorchSSL
ramps it). The numbers these take by default are the
algorithms' class constants, each citing its TorchSSL configuration.

Nothing here reads a tensor's value back to the host: masks, counts and thresholds stay on the
device, so a training step needs no synchronisation.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

TsaSchedule = Literal["none", "linear", "exp", "log"]
TSA_SCHEDULES: tuple[str, ...] = get_args(TsaSchedule)
# UDA's exp and log schedules use exp(+-5 t): TorchSSL's scale (models/uda/uda_utils.py), as in
# Xie et al. (2020)'s TSA.
TSA_SCALE = 5.0
# FlexMatch's memory holds this for an image that has never had a confident prediction
# (Zhang et al. 2021, Sec. 3.2: "unused").
UNUSED = -1


def compute_probs(logits: Tensor) -> Tensor:
    """``softmax(logits)`` in at least float32, detached: a guess is a target, never optimised."""
    return torch.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), 1)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """Temperature sharpening, MixMatch's Sharpen: ``p_c^(1/T) / sum_k p_k^(1/T)``.

    Computed as ``softmax(log(p) / T)``, which is the same distribution without overflowing
    ``p^(1/T)`` for small ``T``; for ``p = softmax(z)`` it equals ``softmax(z / T)`` (UDA's
    sharpened target, TorchSSL ``models/uda/uda_utils.py``). Zero entries stay zero.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    return torch.softmax(torch.log(probs) / temperature, dim=-1)


def confident_pseudo_labels(probs: Tensor, threshold: float | Tensor) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels ``argmax p`` and the mask ``max p >= threshold`` (float, 0 or 1).

    FixMatch's mask ``1(max q_b >= tau)`` (Sohn et al. 2020; TorchSSL's
    ``max_probs.ge(p_cutoff)``, models/fixmatch/fixmatch_utils.py).
    ``threshold`` is one number, or one per sample (FlexMatch's class-wise thresholds, looked
    up at each sample's pseudo-label).
    """
    confidence, labels = probs.max(dim=-1)
    return labels, (confidence >= threshold).to(probs.dtype)


def convex_mapping(x: Tensor) -> Tensor:
    """FlexMatch's convex non-linear mapping ``M(x) = x / (2 - x)`` (Zhang et al. 2021).

    TorchSSL's choice among the mappings it lists (models/flexmatch/flexmatch_utils.py, "convex").
    """
    return x / (2 - x)


def learning_effect(memory: Tensor, num_classes: int, *, warmup: bool) -> Tensor:
    """FlexMatch's normalised learning effect ``beta_t(c)`` of each class, shape (C,).

    ``sigma_t(c)`` counts the images whose latest confident prediction, in ``memory``
    (one entry per unlabelled image, :data:`UNUSED` where none), is class ``c``. Normalised by
    ``max_c sigma_t(c)``, or, with the threshold warm-up, by
    ``max(max_c sigma_t(c), N - sum_c sigma_t(c))``: the unused images count as one more
    "class", so thresholds start low and rise as images get used. Where every count is zero
    (before any confident prediction) ``beta`` is 0 rather than 0 / 0, which is TorchSSL's
    starting ``classwise_acc`` (models/flexmatch/flexmatch.py). TorchSSL also skips its update
    while every entry of the memory is the same (all unused, or all one class), keeping the
    previous values; here the formula holds there too (all one class: ``beta`` 1 for it, 0
    for the rest), a case no real run reaches.
    """
    # scatter_add_ rather than bincount: bincount reads the input's range back to the host.
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=memory.device)
    counts.scatter_add_(0, memory - UNUSED, torch.ones_like(memory))
    unused, sigma = counts[0], counts[1:]
    peak = torch.maximum(sigma.max(), unused) if warmup else sigma.max()
    return sigma.to(torch.float32) / peak.clamp(min=1).to(torch.float32)


def curriculum_thresholds(beta: Tensor, threshold: float) -> Tensor:
    """FlexMatch's class-wise thresholds ``T_t(c) = M(beta_t(c)) * tau`` (Zhang et al. 2021)."""
    return convex_mapping(beta) * threshold


def tsa_threshold(schedule: TsaSchedule, step: int, total_steps: int, num_classes: int) -> float:
    """UDA's training-signal-annealing threshold ``eta_t`` at ``step`` (Xie et al. 2020, TSA).

    ``eta_t = alpha_t (1 - 1/K) + 1/K`` with progress ``t = step / total_steps`` and
    ``alpha_t = t`` (linear), ``exp(5 (t - 1))`` (exp) or ``1 - exp(-5 t)`` (log); ``none``
    gives 1 (no annealing: every labelled sample counts). TorchSSL's ``TSA``
    (models/uda/uda_utils.py) computes the same.
    """
    if schedule not in TSA_SCHEDULES:
        raise ValueError(
            f"TSA schedule must be one of {', '.join(TSA_SCHEDULES)}; got {schedule!r}"
        )
    if schedule == "none":
        return 1.0
    progress = step / total_steps
    if schedule == "linear":
        alpha = progress
    elif schedule == "exp":
        alpha = math.exp((progress - 1) * TSA_SCALE)
    else:
        alpha = 1 - math.exp(-progress * TSA_SCALE)
    return alpha * (1 - 1 / num_classes) + 1 / num_classes


def linear_warmup(step: int, total_steps: int, position: float) -> float:
    """``clip(step / (position * total_steps), 0, 1)``: 0 at the start, 1 from ``position``.

    Pseudo-Label's ramp of the unsupervised weight in TorchSSL (pseudolabel.py and
    models/pseudolabel/pseudolabel.py, ``unsup_warmup_pos``), kept by USB (``unsup_warm_up``).
    """
    if not position > 0:
        return 1.0  # no warm-up
    return min(max(step / (position * total_steps), 0.0), 1.0)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``-sum_c y_c log softmax(z)_c`` (N,), in at least float32.

    ``targets``: classes (N,) or probabilities (N, C). TorchSSL's ``ce_loss`` with
    ``reduction='none'`` (train_utils.py), for hard and soft labels.
    """
    log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    if targets.dim() == 1:
        return -log_p.gather(1, targets.long()[:, None]).squeeze(1)
    return -(targets.to(log_p.dtype) * log_p).sum(dim=-1)
