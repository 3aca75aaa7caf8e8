"""The transfer algorithm a trial trains with (Sec. 4.3, Tables 6 and 9), built from its config.

* ``fine_tuning``: :class:`~trainers.transfer.bss.FineTuning` with ``bss_weight=0``;
  ``bss``: the same with BSS's weight (``BSS_WEIGHT``);
* ``co_tuning``: :class:`~trainers.transfer.co_tuning.CoTuning` with the pretrained source head
  of ``backbone.weights``; its category relationship starts uniform and is learnt by the loop
  before the first step (:mod:`trainers.transfer.relationship`);
* ``self_tuning``: :class:`~trainers.transfer.self_tuning.SelfTuning`.

The cell's mixing policy and loss: ``vanilla`` / ``ce`` runs the algorithm alone. A static
policy with ``mce`` or ``dm_ce`` and ``as_side`` labelled_minor or labelled_major adds the AS
term (Table 6's "+Mixup" and "+DM" rows; Table 9's AS(lambda >= 0.5) with labelled_major), built
as for the SSL hosts (``trainers.ssl.algorithms.asymmetric_term``). Its pseudo-labels must pass
``transfer.as_threshold``; the default is FixMatch's 0.95 for the hosts without an unlabelled
stream of their own (Sec. 4.3: they mix with the rest of the training set, labelled by their
own confident guesses) and Self-Tuning's 0 (it has no threshold; DMixTuning mixes every
pseudo-label). Self-Tuning with ``as_side`` none mixes labelled images among themselves with the
cell's policy and loss (Table 9's "+MCE"); beside an AS term it adds that mixing only where
``transfer.labelled_mixup`` asks for it.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.config import TrainConfig
from trainers.ssl.asymmetric_term import AsymmetricTerm
from trainers.ssl.base import SemiSupervisedAlgorithm
from trainers.transfer.bss import BSS_WEIGHT, FineTuning
from trainers.transfer.co_tuning import CoTuning, source_head_from_weights
from trainers.transfer.own_labels import AS_THRESHOLD
from trainers.transfer.self_tuning import LabelledMixup, SelfTuning
from trainers.vocabulary import AS_DEFAULT_ALPHA, AS_DEFAULT_ETA, TRANSFER

__all__ = ["as_threshold", "build_transfer_algorithm", "new_head", "transfer_views"]


HEAD_INIT_STD = 0.01
"""The new head's weights ~ N(0, 0.01), biases 0: Self-Tuning ``models/classifier.py``."""


def new_head(head: nn.Module) -> None:
    """Start the target's classifier afresh (Self-Tuning's initialisation, ``HEAD_INIT_STD``).

    Every transfer algorithm learns a new head for the target classes. ``load_weights`` keeps
    a file's classifier whenever its shape fits, which a source with as many classes as the
    target (tl_quick's five CIFAR-10 classes) would; the source's class order means nothing
    to the target's. Co-Tuning's source head is read from the file separately.
    """
    with torch.no_grad():
        for name, parameter in head.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.normal_(0.0, HEAD_INIT_STD)


def as_threshold(config: TrainConfig) -> float:
    """The confidence the AS term's pseudo-labels need (module docstring)."""
    if config.transfer.as_threshold is not None:
        return config.transfer.as_threshold
    return SelfTuning.THRESHOLD if config.algorithm == "self_tuning" else AS_THRESHOLD


def _self_tuning(
    config: TrainConfig, model: nn.Module, num_classes: int, term: AsymmetricTerm | None
) -> SelfTuning:
    if config.mixing.method == "vanilla":
        return SelfTuning(model, num_classes)
    alpha, eta = config.mixing.alpha, config.loss.eta
    mixup_alpha = alpha if alpha is not None else AS_DEFAULT_ALPHA
    mixup_eta = eta if eta is not None else AS_DEFAULT_ETA
    if config.semi_supervised.as_side == "none":  # Table 9's "+MCE": labelled among themselves
        loss: LabelledMixup = "dm_ce" if config.loss.name == "dm_ce" else "mce"
        return SelfTuning(
            model,
            num_classes,
            labelled_mixup=loss,
            mixup_policy=config.mixing.method,
            mixup_alpha=mixup_alpha,
            mixup_eta=mixup_eta,
        )
    return SelfTuning(
        model,
        num_classes,
        threshold=as_threshold(config),
        labelled_mixup=config.transfer.labelled_mixup,
        mixup_policy=config.mixing.method,
        mixup_alpha=mixup_alpha,
        mixup_eta=mixup_eta,
        asymmetric=term,
    )


def build_transfer_algorithm(
    config: TrainConfig, model: nn.Module, num_classes: int, term: AsymmetricTerm | None
) -> SemiSupervisedAlgorithm:
    """``config.algorithm`` for ``model`` on ``num_classes`` classes, with the AS ``term``.

    ``term`` is the cell's AS term (None where the cell has none: vanilla, or as_side none).
    """
    name = config.algorithm
    if name not in TRANSFER:
        raise ValueError(f"algorithm {name!r} is not a transfer algorithm")
    threshold = as_threshold(config)
    if name == "fine_tuning":
        return FineTuning(bss_weight=0.0, asymmetric=term, threshold=threshold)
    if name == "bss":
        return FineTuning(bss_weight=BSS_WEIGHT, asymmetric=term, threshold=threshold)
    if name == "co_tuning":
        weights = config.backbone.weights
        if not weights:
            raise ValueError("co_tuning needs backbone.weights with the pretrained source head")
        head = source_head_from_weights(model, weights)
        # Uniform until the loop learns p(y_s | y_t) from the labelled images (a checkpoint's
        # replaces it on resume): the builder reads no data.
        uniform = torch.full((num_classes, head.out_features), 1.0 / head.out_features)
        return CoTuning(head, uniform, asymmetric=term, threshold=threshold)
    return _self_tuning(config, model, num_classes, term)


def transfer_views(config: TrainConfig) -> int:
    """Views of each unlabelled image a step of the transfer trial forwards.

    Self-Tuning: its query and key views, always; the others: one weak view with an AS term.
    """
    if config.algorithm == "self_tuning":
        return len(SelfTuning.views)
    return 1 if config.uses_unlabelled() else 0
