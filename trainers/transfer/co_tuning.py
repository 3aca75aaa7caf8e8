"""Co-Tuning (You et al., NeurIPS 2020, "Co-Tuning for Transfer Learning"): Table 6's row.

The pretrained network keeps its source head (ImageNet's 1000 classes) next to the new target
head, both on the same penultimate features. Before training, the category relationship
p(y_s | y_t) is learnt from the pretrained model's calibrated predictions on the target training
data; training then adds, to the target head's cross-entropy, the source head's cross-entropy
against the soft source label p(y_s | y_t = label) of each image:

    loss = CE(target_head(f), y_t)
           + lambda * mean_b[ -sum_s p(s | y_t,b) * log softmax(source_head(f_b))_s ]

Facts and defaults, from the authors' code (thuml/CoTuning at fc3eb54c, ``train.py`` and
``module/relationship_learning.py``) and its port in thuml/Transfer-Learning-Library
(c4aa59eb, ``tllib/regularization/co_tuning.py`` and
``examples/task_adaptation/image_classification/co_tuning.py``):

* lambda = 2.3: ``--trade_off 2.3`` in both (``CO_TUNING_WEIGHT``).
* The relationship: the "direct approach" (the paper's, and tllib's only one) averages the
  source-class probabilities of the target images of each class. CoTuning's ``train.py``
  calls the "reverse approach" instead (a logistic regression from source probabilities to
  target classes, its C chosen on a validation split, re-calibrated and inverted by Bayes' rule
  with the source marginal); that needs scikit-learn and a validation split, and is not here.
  Our choice: the direct approach, as the brief asks.
* Calibration: CoTuning's ``relationship_learning.py`` multiplies the source logits by the fixed
  constant 0.8840456604957581 before the softmax, in both approaches
  (``SOURCE_LOGIT_SCALE``; the code does not say where it comes from: presumably a temperature
  fitted once by their ``calibrate`` (NLL minimisation) for the torchvision ResNet-50 they use;
  it is not re-fitted per data set). tllib uses the plain softmax (scale 1). Our default: the
  authors' constant.
* Which images: CoTuning averages over the train and validation splits together, in
  evaluation mode with the test-time transform (``determin_train_dataset``); tllib over the
  training split only. :func:`collect_source_probs` takes whatever batches it is given.
* The soft-label loss sums over source classes and averages over the batch
  (``CoTuningLoss``; ``imagenet_loss`` in ``train.py``).

The authors also give the source head the backbone's learning rate (0.1 x that of the target
head, tllib ``Classifier.get_parameters``); that belongs to the optimiser's parameter groups,
not to this module, whose source head is in ``parameters()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.ssl.asymmetric_term import AsymmetricTerm
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch, SemiSupervisedStep, View
from trainers.ssl.checks import check_count, check_positive, check_unit, check_weight
from trainers.ssl.features import penultimate_features
from trainers.ssl.pseudo_labels import cross_entropy
from trainers.transfer.own_labels import AS_THRESHOLD, own_views, step_with_own_labels
from trainers.weights import read_source_head

__all__ = [
    "CO_TUNING_WEIGHT",
    "SOURCE_LOGIT_SCALE",
    "CoTuning",
    "calibrated_source_probs",
    "category_relationship",
    "collect_source_probs",
    "source_head_from_weights",
]

CO_TUNING_WEIGHT = 2.3
"""lambda: CoTuning ``train.py --trade_off 2.3``; tllib example ``co_tuning.py --trade-off 2.3``."""

SOURCE_LOGIT_SCALE = 0.8840456604957581
"""Calibration of the source logits: CoTuning ``module/relationship_learning.py`` (tllib: 1)."""


def calibrated_source_probs(logits: Tensor, scale: float = SOURCE_LOGIT_SCALE) -> Tensor:
    """softmax(``scale`` * logits) over the last dimension, in float32 (CoTuning's calibration)."""
    check_positive("scale", scale)
    return torch.softmax(logits.float() * scale, dim=-1)


def category_relationship(
    source_probs: Tensor, target_labels: Tensor, num_target_classes: int
) -> Tensor:
    """p(y_s | y_t): row t is the mean of ``source_probs`` over the images labelled t.

    The direct approach of Co-Tuning (CoTuning ``direct_relationship_learning``; tllib
    ``Relationship.get_category_relationship``). ``source_probs`` (N, C_s) are the calibrated
    source-class probabilities (:func:`calibrated_source_probs`), ``target_labels`` (N,) their
    target classes. Returns a (``num_target_classes``, C_s) float32 matrix whose rows sum to 1.

    Our choice where the authors' code gives NaN (numpy's mean of no rows): a target class with
    no image is a ValueError naming it; ``num_target_classes`` is given rather than taken as
    ``max(label) + 1``, so a missing last class is caught too.
    """
    check_count("num_target_classes", num_target_classes)
    if source_probs.dim() != 2:
        raise ValueError(f"source_probs must be (N, C_s); got shape {tuple(source_probs.shape)}")
    if target_labels.dim() != 1 or len(target_labels) != len(source_probs):
        raise ValueError(
            f"target_labels must be ({len(source_probs)},), one per row of source_probs; got "
            f"shape {tuple(target_labels.shape)}"
        )
    if target_labels.dtype.is_floating_point or target_labels.dtype == torch.bool:
        raise ValueError(f"target_labels must be integers; got {target_labels.dtype}")
    labels = target_labels.long().to(source_probs.device)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_target_classes):
        raise ValueError(
            f"target labels must lie in [0, {num_target_classes}); got "
            f"{labels.min().item()} .. {labels.max().item()}"
        )
    counts = torch.bincount(labels, minlength=num_target_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise ValueError(f"no image of target class(es) {shown}: p(y_s | y_t) is undefined there")
    probs = source_probs.float()
    sums = probs.new_zeros(num_target_classes, probs.shape[1]).index_add_(0, labels, probs)
    return sums / counts.unsqueeze(1).to(probs.dtype)


@torch.no_grad()
def collect_source_probs(
    model: nn.Module,
    source_head: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    scale: float = SOURCE_LOGIT_SCALE,
) -> tuple[Tensor, Tensor]:
    """The calibrated source probabilities (N, C_s) and labels (N,) of ``batches``, on CPU.

    The pretrained model runs in evaluation mode (as both codebases do: running batch-norm
    statistics, no dropout); ``source_head`` is applied to its penultimate features, as during
    training. ``batches`` yields (images on the model's device, labels). The training modes
    of ``model`` and ``source_head`` are restored afterwards.
    """
    modes = [(module, module.training) for module in (model, source_head)]
    model.eval()
    source_head.eval()
    probs: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for images, targets in batches:
            with penultimate_features(model) as captured:
                model(images)
            logits = source_head(captured.get())
            probs.append(calibrated_source_probs(logits, scale).cpu())
            labels.append(targets.cpu())
    finally:
        for module, training in modes:
            module.train(training)
    if not probs:
        raise ValueError("no batch to collect source predictions from")
    return torch.cat(probs), torch.cat(labels)


def source_head_from_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Linear:
    """The pretrained classifier of weights file ``path`` as a linear layer, for :class:`CoTuning`.

    Reads and checks the file with :func:`trainers.weights.read_source_head` (its ValueError
    names the file and the first tensor that does not fit ``model``). The layer is a fresh
    float32 copy on the CPU: move the algorithm with ``.to(device)``.
    """
    weight, bias = read_source_head(model, path)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        if bias is not None:
            head.bias.copy_(bias.float())
    return head


class CoTuning(SemiSupervisedAlgorithm):
    """Co-Tuning's step: the target head's CE plus ``weight`` x the source head's soft CE.

    Args:
        source_head: the pretrained classifier (C_s outputs on the backbone's penultimate
            features), e.g. from :func:`source_head_from_weights`; it is trained,
            and is part of this module's parameters and state dict.
        relationship: p(y_s | y_t), (C_t, C_s) (:func:`category_relationship`); a buffer, so
            checkpoints carry it and ``.to(device)`` moves it.
        weight: lambda, the source term's weight (``CO_TUNING_WEIGHT``).
        asymmetric: the AS term (Table 6's "Co-Tuning+DM"), or None.
        threshold: the confidence the model's own pseudo-labels need to take part in it.

    The model passed to ``forward`` is the backbone with its target head (C_t outputs). No
    unlabelled view (``views = ()``), except one weak view with the AS term
    (:mod:`trainers.transfer.own_labels`, its loss counted with the unsupervised part). The
    relationship can be replaced before training (:meth:`set_relationship`: the loop learns it
    from the labelled images once the model is on its device). The step reports the target CE
    as ``supervised`` and the weighted source term (plus the AS term) as ``unsupervised`` (our
    choice: "the rest of the loss", so that the parts add up to ``loss``).

    """

    views: tuple[View, ...] = ()
    relationship: Tensor

    def __init__(
        self,
        source_head: nn.Linear,
        relationship: Tensor,
        *,
        weight: float = CO_TUNING_WEIGHT,
        asymmetric: AsymmetricTerm | None = None,
        threshold: float = AS_THRESHOLD,
    ) -> None:
        super().__init__()
        check_weight("weight", weight)
        check_unit("threshold", threshold)
        if not isinstance(source_head, nn.Linear):
            raise ValueError(f"source_head must be an nn.Linear; got {type(source_head).__name__}")
        if relationship.dim() != 2 or relationship.shape[1] != source_head.out_features:
            raise ValueError(
                f"relationship must be (C_t, {source_head.out_features}), one column per source "
                f"class of the head; got shape {tuple(relationship.shape)}"
            )
        rows = relationship.float().sum(dim=1)
        if (relationship < 0).any() or not torch.allclose(rows, torch.ones_like(rows), atol=1e-3):
            raise ValueError("relationship rows must be probability distributions (>= 0, sum 1)")
        self.source_head = source_head
        self.register_buffer("relationship", relationship.detach().float().clone())
        self.weight = float(weight)
        self.asymmetric = asymmetric
        self.threshold = float(threshold)
        self.views = own_views(asymmetric)

    def set_relationship(self, relationship: Tensor) -> None:
        """Replace p(y_s | y_t) by ``relationship`` of the same shape (a buffer, in place)."""
        if relationship.shape != self.relationship.shape:
            raise ValueError(
                f"relationship must keep shape {tuple(self.relationship.shape)}; got "
                f"{tuple(relationship.shape)}"
            )
        self.relationship.copy_(relationship)

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        target, source = self.relationship.shape
        return f"weight={self.weight}, target_classes={target}, source_classes={source}"

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One step: target CE, plus ``weight`` x the source head's CE to p(y_s | y_t)."""
        with penultimate_features(model) as captured:
            logits = model(batch.labelled)
        if logits.shape[1] != self.relationship.shape[0]:
            raise ValueError(
                f"the model has {logits.shape[1]} target classes, the relationship "
                f"{self.relationship.shape[0]}"
            )
        supervised = F.cross_entropy(logits, batch.targets)
        source_logits = self.source_head(captured.get())
        soft_labels = self.relationship[batch.targets]
        unsupervised = self.weight * cross_entropy(source_logits, soft_labels).mean()
        return step_with_own_labels(
            self.asymmetric,
            self.threshold,
            model,
            batch,
            generator,
            supervised=supervised,
            unsupervised=unsupervised,
        )
