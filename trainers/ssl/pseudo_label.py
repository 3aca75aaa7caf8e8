"""Pseudo-Labeling (Lee, 2013), the "Pseudo-Labeling" row of Table 7 ("CE"), as TorchSSL runs it.

The unlabelled images are seen once, weakly augmented; the argmax of the model's own prediction
is their label, kept where its probability is at least ``threshold``, and learnt by
cross-entropy through the same logits (the target is detached, the prediction is not: Lee's
formulation). The unsupervised weight ramps linearly from 0 to ``lambda_u`` over the first
``warmup_position`` of the run (Lee's deterministic annealing, as TorchSSL's
``unsup_warmup_pos`` schedules it):

    loss = CE(labelled) + lambda_u * w(t) * mean_b[ 1(max p_b >= threshold) CE(weak_b, argmax p_b) ]

TorchSSL (models/pseudolabel/pseudolabel.py) runs the labelled batch, then the unlabelled one
with batch norm's running statistics frozen (:func:`~trainers.ssl.forwards.
running_statistics_frozen`); so does this module.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.ssl.asymmetric_term import AsymmetricTerm, pseudo_labelling_step
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_unit, check_weight
from trainers.ssl.forwards import running_statistics_frozen
from trainers.ssl.pseudo_labels import (
    compute_probs,
    confident_pseudo_labels,
    cross_entropy,
    linear_warmup,
)


class PseudoLabel(SemiSupervisedAlgorithm):
    """Pseudo-Label: confident argmax labels of the weak view, weight warmed up linearly.

    Keyword settings (TorchSSL defaults, the same for CIFAR-10 and CIFAR-100): ``threshold``,
    ``lambda_u``, ``warmup_position`` (the fraction of the run over which the unsupervised
    weight rises to ``lambda_u``; 0: none), ``asymmetric`` (an optional AS term).
    The loop should give it TorchSSL's unlabelled ratio of 1 (``uratio: 1`` in its configs,
    against 7 for FixMatch).
    """

    views: tuple[View, ...] = ("weak",)

    # config/pseudolabel/pseudolabel_cifar10_4000_0.yaml and pseudolabel_cifar100_2500_0.yaml:
    # ulb_loss_ratio 1.0; pseudolabel.py: --p_cutoff 0.95, --unsup_warmup_pos 0.4 (USB's
    # config/classic_cv/pseudolabel: p_cutoff 0.95, unsup_warm_up 0.4).
    THRESHOLD = 0.95
    LAMBDA_U = 1.0
    WARMUP_POSITION = 0.4

    def __init__(
        self,
        *,
        threshold: float = THRESHOLD,
        lambda_u: float = LAMBDA_U,
        warmup_position: float = WARMUP_POSITION,
        asymmetric: AsymmetricTerm | None = None,
    ) -> None:
        super().__init__()
        check_unit("threshold", threshold)
        check_weight("lambda_u", lambda_u)
        check_unit("warmup_position", warmup_position)
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)
        self.warmup_position = float(warmup_position)
        self.asymmetric = asymmetric

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return (
            f"threshold={self.threshold}, lambda_u={self.lambda_u}, "
            f"warmup_position={self.warmup_position}"
        )

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step: supervised CE plus the warmed-up, masked CE of the model's own labels."""
        (weak,) = batch.unlabelled
        logits_l = model(batch.labelled)
        with running_statistics_frozen(model):
            logits_u = model(weak)
        supervised = cross_entropy(logits_l, batch.targets).mean()
        pseudo_labels, mask = confident_pseudo_labels(compute_probs(logits_u), self.threshold)
        consistency = (cross_entropy(logits_u, pseudo_labels) * mask).mean()
        weight = self.lambda_u * linear_warmup(batch.step, batch.total_steps, self.warmup_position)
        unsupervised = weight * consistency
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
