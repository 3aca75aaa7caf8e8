"""The AS term of a transfer algorithm without an unlabelled stream of its own (Sec. 4.3).

Fine-Tuning, BSS and Co-Tuning learn from labelled images only. The DM paper adds the
asymmetric strategy to them (Table 6's "+DM" rows; Sec. 4.3): each labelled image is mixed with
an unlabelled image of the rest of the training set, labelled by the model's own confident
pseudo-label, as FixMatch labels its partners (Sohn et al., 2020: the argmax of the weak view's
prediction where its confidence reaches tau = 0.95). So such a host draws one weak view of each
unlabelled image, guesses its label without gradient, and hands the guess to the same
:func:`~trainers.ssl.asymmetric_term.pseudo_labelling_step` the SSL hosts use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.ssl.asymmetric_term import AsymmetricTerm, pseudo_labelling_step
from trainers.ssl.base import SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.pseudo_labels import compute_probs, confident_pseudo_labels

__all__ = ["AS_THRESHOLD", "own_views", "step_with_own_labels"]

AS_THRESHOLD = 0.95
"""The confidence a pseudo-label needs: FixMatch's tau (TorchSSL ``p_cutoff 0.95``)."""


def own_views(asymmetric: AsymmetricTerm | None) -> tuple[View, ...]:
    """The unlabelled views such a host needs: one weak view with the AS term, else none."""
    return ("weak",) if asymmetric is not None else ()


def step_with_own_labels(
    asymmetric: AsymmetricTerm | None,
    threshold: float,
    model: nn.Module,
    batch: SemiSupervisedBatch,
    generator: torch.Generator,
    *,
    supervised: Tensor,
    unsupervised: Tensor,
) -> SemiSupervisedStep:
    """The host's step: its losses, plus the AS term on its own pseudo-labels where it has one.

    The guess is a forward of the weak view in the model's current (training) mode without
    gradient, as FixMatch's weak-view logits are detached; its mask is ``max p >= threshold``.
    """
    if asymmetric is None:
        empty = batch.targets.new_empty(0)
        return SemiSupervisedStep(
            loss=supervised + unsupervised,
            supervised=supervised.detach(),
            unsupervised=unsupervised.detach(),
            pseudo_labels=empty,
            mask=empty.float(),
        )
    if len(batch.unlabelled) != 1:
        raise ValueError(
            f"the AS term takes one weak unlabelled view; got {len(batch.unlabelled)} views"
        )
    (weak,) = batch.unlabelled
    with torch.no_grad():
        probs = compute_probs(model(weak))
    pseudo_labels, mask = confident_pseudo_labels(probs, threshold)
    return pseudo_labelling_step(
        asymmetric,
        model,
        batch,
        weak,
        generator,
        supervised=supervised,
        unsupervised=unsupervised,
        pseudo_labels=pseudo_labels,
        mask=mask,
    )
