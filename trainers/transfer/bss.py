"""Fine-Tuning and Batch Spectral Shrinkage: Table 6's "Fine-Tuning" and "BSS" rows.

BSS (Chen et al., NeurIPS 2019, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
Shrinkage for Safe Transfer Learning"; the regulariser L_bss, added to the cross-entropy with a
weight eta) penalises the ``k`` smallest singular values of the batch's feature matrix F (N x D, the
features the classifier sees):

    L_bss(F) = sum_{i=1..k} sigma_{-i}(F)^2

Defaults from thuml/Transfer-Learning-Library (commit c4aa59eb):
``tllib/regularization/bss.py`` (``BatchSpectralShrinkage(k=1)``: the squared smallest singular
values of ``feature.t()``, which has the same singular values as ``feature``) and
``examples/task_adaptation/image_classification/bss.py`` (``-k 1``, ``--trade-off 0.001``; the
features are the pooled backbone output that enters the head, ``y, f = model(x)``).

Fine-Tuning is the same step with the penalty off (``bss_weight=0``): cross-entropy on the
labelled batch only, as :class:`~trainers.ssl.labelled_only.LabelledOnly`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.ssl.asymmetric_term import AsymmetricTerm
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_count, check_unit, check_weight
from trainers.ssl.features import penultimate_features
from trainers.transfer.own_labels import AS_THRESHOLD, own_views, step_with_own_labels

__all__ = ["BSS_K", "BSS_WEIGHT", "FineTuning", "bss_penalty"]

BSS_K = 1
"""Singular values penalised: tllib ``BatchSpectralShrinkage(k=1)`` and its example's ``-k 1``."""

BSS_WEIGHT = 0.001
"""eta, the penalty's weight: tllib example ``bss.py --trade-off 0.001`` (the BSS paper's own
text was not at hand to check against)."""


def bss_penalty(features: Tensor, k: int = BSS_K) -> Tensor:
    """Sum of the ``k`` smallest squared singular values of ``features`` (N, D) (BSS's L_bss).

    A matrix of N rows and D columns has min(N, D) singular values; ``k`` must not exceed that.
    Half-precision input is computed in float32 (SVD has no half-precision kernels, and the
    smallest singular values are the ones rounding hurts most); float64 stays float64.
    ``torch.linalg.svdvals`` rather than tllib's ``torch.svd``: the same values, and its
    gradient stays finite when singular values repeat (the full SVD's backward divides by their
    differences).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be an (N, D) matrix; got shape {tuple(features.shape)}")
    check_count("k", k)
    rank_bound = min(features.shape)
    if k > rank_bound:
        raise ValueError(
            f"k = {k} exceeds the {rank_bound} singular values of a "
            f"{features.shape[0]} x {features.shape[1]} feature matrix"
        )
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    singular = torch.linalg.svdvals(features)  # descending
    return singular[-k:].square().sum()


class FineTuning(SemiSupervisedAlgorithm):
    """Cross-entropy on the labelled batch, plus ``bss_weight`` times the BSS penalty.

    ``bss_weight=0`` is Table 6's plain "Fine-Tuning" (no SVD is computed); the default is its
    "BSS" row. The penalty is on the penultimate features of the labelled batch
    (:func:`~trainers.ssl.features.penultimate_features`), as tllib's example penalises the
    features entering its head. No unlabelled view is used (``views = ()``), unless
    ``asymmetric`` adds the AS term (Table 6's "+DM" rows): then one weak view of each unlabelled
    image, labelled by the model's own pseudo-label where its confidence reaches ``threshold``
    (:mod:`trainers.transfer.own_labels`), its loss counted with the unsupervised part.

    The step reports the cross-entropy as ``supervised`` and the weighted penalty as
    ``unsupervised`` (our choice: that field holds "the rest of the loss", so that the two
    parts still add up to ``loss``; the penalty uses no unlabelled image).
    """

    views: tuple[View, ...] = ()

    def __init__(
        self,
        *,
        bss_weight: float = BSS_WEIGHT,
        k: int = BSS_K,
        asymmetric: AsymmetricTerm | None = None,
        threshold: float = AS_THRESHOLD,
    ) -> None:
        super().__init__()
        check_weight("bss_weight", bss_weight)
        check_count("k", k)
        check_unit("threshold", threshold)
        self.bss_weight = float(bss_weight)
        self.k = int(k)
        self.asymmetric = asymmetric
        self.threshold = float(threshold)
        self.views = own_views(asymmetric)

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return f"bss_weight={self.bss_weight}, k={self.k}, threshold={self.threshold}"

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step: CE on the labelled batch, the weighted BSS penalty of its features, AS."""
        if self.bss_weight > 0:
            with penultimate_features(model) as captured:
                logits = model(batch.labelled)
            penalty = self.bss_weight * bss_penalty(captured.get(), self.k)
        else:
            logits = model(batch.labelled)
            penalty = logits.new_zeros((), dtype=torch.float32)
        supervised = F.cross_entropy(logits, batch.targets)
        return step_with_own_labels(
            self.asymmetric,
            self.threshold,
            model,
            batch,
            generator,
            supervised=supervised,
            unsupervised=penalty,
        )
