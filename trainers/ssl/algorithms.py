"""The algorithm a semi-supervised trial trains with, built from its ``TrainConfig``.

Each algorithm keeps its TorchSSL defaults (its module says which); the trial chooses the
algorithm, and for the pseudo-labelling ones the asymmetric strategy's term from its mixing
method and loss: ``vanilla`` / ``ce`` runs the algorithm alone, a static policy with ``mce`` or
``dm_ce`` adds the term (Table 7's "+Mixup" and "+DM" rows) with the trial's ``alpha``, ``eta``,
``lambda_mode`` and ``semi_supervised.as_side``. The transfer algorithms of Table 6 are built
by :mod:`trainers.transfer.algorithms`, with the same AS term.
"""

from __future__ import annotations

from torch import nn

from trainers.config import TrainConfig
from trainers.ssl.asymmetric_term import AsymmetricTerm
from trainers.ssl.base import SemiSupervisedAlgorithm
from trainers.ssl.features import feature_dim
from trainers.ssl.fixmatch import FixMatch
from trainers.ssl.flexmatch import FlexMatch
from trainers.ssl.labelled_only import LabelledOnly
from trainers.ssl.mixmatch import MixMatch
from trainers.ssl.pseudo_label import PseudoLabel
from trainers.ssl.remixmatch import ReMixMatch
from trainers.ssl.uda import UDA
from trainers.transfer.algorithms import build_transfer_algorithm, transfer_views
from trainers.vocabulary import TRANSFER


def asymmetric_term(config: TrainConfig) -> AsymmetricTerm | None:
    """The AS term of a pseudo-labelling trial, or None where it runs the algorithm alone.

    None also for as_side none (Self-Tuning's cells that mix labelled images among themselves).
    """
    side = config.semi_supervised.as_side
    if config.mixing.method == "vanilla" or side == "none":
        return None
    term = AsymmetricTerm
    eta = config.loss.eta
    return AsymmetricTerm(
        policy=config.mixing.method,
        alpha=config.mixing.alpha if config.mixing.alpha is not None else term.DEFAULT_ALPHA,
        loss="dm_ce" if config.loss.name == "dm_ce" else "mce",
        eta=eta if eta is not None else AsymmetricTerm.DEFAULT_ETA,
        side=side,
        lambda_mode=config.mixing.lambda_mode,
        saliency_detector=config.mixing.saliency_detector,
    )


def build_algorithm(
    config: TrainConfig, model: nn.Module, num_classes: int, unlabelled_images: int
) -> SemiSupervisedAlgorithm:
    """``config.algorithm`` with its settings, for ``model`` on ``num_classes`` classes.

    ``unlabelled_images`` sizes FlexMatch's memory; ReMixMatch's rotation head reads the
    model's feature size.

    MixMatch and ReMixMatch mix with their own Mixup at the cell's ``alpha``; MixMatch with
    ``dm_ce`` is Table 7's MixMatch+DM: AS's fold of lambda (``semi_supervised.as_side``) and
    the decoupled term at ``eta``.
    """
    name = config.algorithm
    alpha = config.mixing.alpha
    if name in TRANSFER:
        return build_transfer_algorithm(config, model, num_classes, asymmetric_term(config))
    if name == "mixmatch":
        assert alpha is not None  # MixingConfig requires it of mixup
        decoupled = config.loss.name == "dm_ce"
        labelled_minor = config.semi_supervised.as_side == "labelled_minor"
        return MixMatch(
            alpha=alpha,
            decoupled=decoupled,
            eta=config.loss.eta if config.loss.eta is not None else AsymmetricTerm.DEFAULT_ETA,
            lam_fold="asymmetric" if decoupled and labelled_minor else "mixmatch",
        )
    if name == "remixmatch":
        assert alpha is not None
        return ReMixMatch(num_classes, feature_dim(model), alpha=alpha)
    if name == "labelled_only":
        return LabelledOnly()
    if name == "pseudo_label":
        return PseudoLabel(asymmetric=asymmetric_term(config))
    if name == "fixmatch":
        return FixMatch(asymmetric=asymmetric_term(config))
    if name == "flexmatch":
        return FlexMatch(unlabelled_images, asymmetric=asymmetric_term(config))
    if name == "uda":
        return UDA(asymmetric=asymmetric_term(config))
    raise ValueError(f"algorithm {name!r} is not a semi-supervised algorithm")


def unlabelled_views(config: TrainConfig) -> int:
    """How many views of each unlabelled image a step of the trial forwards.

    A transfer algorithm's views depend on its cell (an AS term draws one), so the config.
    """
    name = config.algorithm
    if name in TRANSFER:
        return transfer_views(config)
    kinds: dict[str, type[SemiSupervisedAlgorithm]] = {
        "labelled_only": LabelledOnly,
        "pseudo_label": PseudoLabel,
        "mixmatch": MixMatch,
        "remixmatch": ReMixMatch,
        "uda": UDA,
        "fixmatch": FixMatch,
        "flexmatch": FlexMatch,
    }
    if name not in kinds:
        raise ValueError(f"algorithm {name!r} is not a semi-supervised algorithm")
    return len(kinds[name].views)
