"""FixMatch (Sohn et al., 2020): Table 7's "FixMatch" row, and with an AS term "+Mixup", "+DM".

The "FixMatch+Mixup" and "FixMatch+DM" rows (Sec. 3.2, 4.4) add
:class:`~trainers.ssl.asymmetric_term.AsymmetricTerm` with ``loss="mce"`` or ``"dm_ce"``.

One forward of the labelled weak views and both unlabelled views, concatenated (TorchSSL,
models/fixmatch/fixmatch.py). The guess is the softmax of the weak view (no gradient); its
argmax is the hard pseudo-label, kept where its probability is at least ``tau``; the strong view
learns it by cross-entropy:

    loss = CE(labelled) + lambda_u * mean_b[ 1(max q_b >= tau) CE(strong_b, argmax q_b) ]

the mean over the whole unlabelled batch (masked samples count as zeros), as in FixMatch and
TorchSSL's ``consistency_loss`` (models/fixmatch/fixmatch_utils.py). With ``asymmetric``, the AS
term of :class:`~trainers.ssl.asymmetric_term.AsymmetricTerm` is added with weight 1, its
partners' labels and confidence being the same pseudo-labels and mask.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.ssl.asymmetric_term import AsymmetricTerm, pseudo_labelling_step
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_positive, check_unit, check_weight
from trainers.ssl.forwards import joint_logits
from trainers.ssl.pseudo_labels import (
    compute_probs,
    confident_pseudo_labels,
    cross_entropy,
    sharpen,
)


class FixMatch(SemiSupervisedAlgorithm):
    """FixMatch: hard pseudo-labels of the weak view above ``threshold`` teach the strong view.

    Keyword settings (TorchSSL defaults, the same for CIFAR-10 and CIFAR-100):
    ``threshold`` (tau), ``lambda_u`` (unsupervised weight), ``hard_labels`` (False: the soft
    target ``softmax(weak / temperature)`` instead of the argmax), ``temperature``,
    ``asymmetric`` (an optional AS term, Table 7's "+Mixup" / "+DM").
    """

    views: tuple[View, ...] = ("weak", "strong")

    # config/fixmatch/fixmatch_cifar10_4000_0.yaml and fixmatch_cifar100_2500_0.yaml: p_cutoff
    # 0.95 (also Sec. 4.4's tau), ulb_loss_ratio 1.0, hard_label True, T 0.5.
    THRESHOLD = 0.95
    LAMBDA_U = 1.0
    HARD_LABELS = True
    TEMPERATURE = 0.5

    def __init__(
        self,
        *,
        threshold: float = THRESHOLD,
        lambda_u: float = LAMBDA_U,
        hard_labels: bool = HARD_LABELS,
        temperature: float = TEMPERATURE,
        asymmetric: AsymmetricTerm | None = None,
    ) -> None:
        super().__init__()
        check_unit("threshold", threshold)
        check_weight("lambda_u", lambda_u)
        check_positive("temperature", temperature)
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)
        self.hard_labels = bool(hard_labels)
        self.temperature = float(temperature)
        self.asymmetric = asymmetric

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return (
            f"threshold={self.threshold}, lambda_u={self.lambda_u}, "
            f"hard_labels={self.hard_labels}, temperature={self.temperature}"
        )

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step: supervised CE, masked consistency of the strong view, optional AS term."""
        weak, strong = batch.unlabelled
        logits_l, logits_w, logits_s = joint_logits(model, batch.labelled, weak, strong)
        supervised = cross_entropy(logits_l, batch.targets).mean()
        probs = compute_probs(logits_w)
        pseudo_labels, mask = confident_pseudo_labels(probs, self.threshold)
        # TorchSSL's hard_label False: the weak view's softmax at temperature T as the target.
        target = pseudo_labels if self.hard_labels else sharpen(probs, self.temperature)
        consistency = (cross_entropy(logits_s, target) * mask).mean()
        unsupervised = self.lambda_u * consistency
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
