"""UDA (Xie et al., 2020), the "UDA" row of Table 7 ("CE+Con").

One forward of the labelled images and both unlabelled views, concatenated (TorchSSL,
models/uda/uda.py). The weak view's softmax sharpened at temperature ``T``
(``softmax(z_weak / T)``, no gradient) is the target of the strong view, for the unlabelled
images whose unsharpened confidence is at least ``threshold`` (UDA's confidence-based masking):

    loss = mean_n[ 1(p(y_n | x_n) <= eta_t) CE(x_n, y_n) ]
         + lambda_u * mean_b[ 1(max q_b >= threshold) D(sharpen(q_b, T), strong_b) ]

``D`` is the cross-entropy (TorchSSL's ``'ce'`` consistency) or the KL divergence (UDA's own
formulation, TorchSSL's ``'kld_tf'``); the two differ by the target's entropy, a constant of
the model, so their gradients agree. ``eta_t`` is the training-signal-annealing threshold of
:func:`~trainers.ssl.pseudo_labels.tsa_threshold`; both means run over the whole batch.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from trainers.ssl.asymmetric_term import AsymmetricTerm, pseudo_labelling_step
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_positive, check_unit, check_weight
from trainers.ssl.forwards import joint_logits
from trainers.ssl.pseudo_labels import (
    TSA_SCHEDULES,
    TsaSchedule,
    compute_probs,
    confident_pseudo_labels,
    cross_entropy,
    sharpen,
    tsa_threshold,
)

Consistency = Literal["ce", "kl"]
CONSISTENCIES: tuple[str, ...] = get_args(Consistency)
# Which probability of a labelled sample TSA compares with eta_t: the true class's (UDA's paper)
# or the largest (TorchSSL's and USB's ``torch.max(softmax(logits_x_lb))``).
TsaProbability = Literal["target", "max"]
TSA_PROBABILITIES: tuple[str, ...] = get_args(TsaProbability)


class UDA(SemiSupervisedAlgorithm):
    """UDA: sharpened, confidence-masked consistency of the strong view, TSA on the labels.

    Keyword settings (TorchSSL defaults, the same for CIFAR-10 and CIFAR-100): ``temperature``
    (T), ``threshold`` (the confidence mask), ``lambda_u``, ``tsa_schedule`` (``"none"``,
    ``"linear"``, ``"exp"``, ``"log"``), ``tsa_probability``, ``consistency`` (``"ce"`` or
    ``"kl"``), ``asymmetric`` (an optional AS term, whose partners are the confident ones).
    """

    views: tuple[View, ...] = ("weak", "strong")

    # config/uda/uda_cifar10_4000_0.yaml and uda_cifar100_2500_0.yaml: T 0.4, p_cutoff 0.8,
    # ulb_loss_ratio 1.0, TSA_schedule none (also uda.py's --TSA_schedule default, and USB's
    # config/classic_cv/uda); TorchSSL's consistency is 'ce' with the sharpened soft target and
    # its TSA reads the largest probability (models/uda/uda.py).
    TEMPERATURE = 0.4
    THRESHOLD = 0.8
    LAMBDA_U = 1.0
    TSA_SCHEDULE: TsaSchedule = "none"
    TSA_PROBABILITY: TsaProbability = "max"
    CONSISTENCY: Consistency = "ce"

    def __init__(
        self,
        *,
        temperature: float = TEMPERATURE,
        threshold: float = THRESHOLD,
        lambda_u: float = LAMBDA_U,
        tsa_schedule: TsaSchedule = TSA_SCHEDULE,
        tsa_probability: TsaProbability = TSA_PROBABILITY,
        consistency: Consistency = CONSISTENCY,
        asymmetric: AsymmetricTerm | None = None,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        check_unit("threshold", threshold)
        check_weight("lambda_u", lambda_u)
        for name, value, allowed in (
            ("tsa_schedule", tsa_schedule, TSA_SCHEDULES),
            ("tsa_probability", tsa_probability, TSA_PROBABILITIES),
            ("consistency", consistency, CONSISTENCIES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)
        self.tsa_schedule: TsaSchedule = tsa_schedule
        self.tsa_probability: TsaProbability = tsa_probability
        self.consistency: Consistency = consistency
        self.asymmetric = asymmetric

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return (
            f"temperature={self.temperature}, threshold={self.threshold}, "
            f"lambda_u={self.lambda_u}, tsa_schedule={self.tsa_schedule}, "
            f"tsa_probability={self.tsa_probability}, consistency={self.consistency}"
        )

    def supervised_mask(
        self, logits: Tensor, targets: Tensor, step: int, total_steps: int
    ) -> Tensor:
        """TSA's mask of the labelled batch, (B,): 1 where the probability is at most ``eta_t``."""
        eta = tsa_threshold(self.tsa_schedule, step, total_steps, logits.shape[1])
        probs = compute_probs(logits)
        if self.tsa_probability == "target":
            seen = probs.gather(1, targets.long()[:, None]).squeeze(1)
        else:
            seen = probs.max(dim=-1).values
        return (seen <= eta).to(probs.dtype)

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step: TSA-masked CE, masked sharpened consistency, optional AS term."""
        weak, strong = batch.unlabelled
        logits_l, logits_w, logits_s = joint_logits(model, batch.labelled, weak, strong)
        tsa = self.supervised_mask(logits_l, batch.targets, batch.step, batch.total_steps)
        supervised = (cross_entropy(logits_l, batch.targets) * tsa).mean()
        probs = compute_probs(logits_w)
        pseudo_labels, mask = confident_pseudo_labels(probs, self.threshold)
        target = sharpen(probs, self.temperature)
        divergence = cross_entropy(logits_s, target)
        if self.consistency == "kl":
            # KL = CE - H(target); xlogy keeps 0 log 0 = 0 where sharpening underflowed.
            divergence = divergence + torch.special.xlogy(target, target).sum(dim=-1)
        unsupervised = self.lambda_u * (divergence * mask).mean()
        return pseudo_labelling_step(
            self.asymmetric,
            model,
            batch,
            weak,
            generator,
            supervised=supervised,
            unsupervised=unsupervised,
            pseudo_labels=pseudo_labels,
            mask=mask,
        )
