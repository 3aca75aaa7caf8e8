"""The "+Mixup" and "+DM" rows of Table 7: AS-mixed samples added to a pseudo-labelling loss.

The asymmetric strategy of Sec. 3.2 mixes each labelled image ``x_a`` with an unlabelled one
``u_b``, ``x = lam x_a + (1 - lam) u_b`` with ``lam < 0.5`` (:func:`~trainers.mixing.
asymmetric.asymmetric_mix`, any static policy, ``lam`` folded to ``side``), labelled
``y = lam y_a + (1 - lam) v_b`` where ``v_b`` is the host algorithm's hard pseudo-label of
``u_b`` (for FixMatch, the argmax of its weak view). Only partners whose pseudo-label passes the
host's confidence mask count: the per-pair loss is masked and averaged over the confident pairs
(a false pseudo-label mixed in would feed the confirmation bias Sec. 3.2 sets out to avoid).

* ``loss="mce"`` (FixMatch+Mixup, "CE+Con+MCE"): ``lam CE(z, y_a) + (1 - lam) CE(z, v_b)``, the
  mixup cross-entropy of Eq. (1) with the pseudo-label as the second class;
* ``loss="dm_ce"`` (FixMatch+DM, "CE+Con+DM"): the same plus ``eta`` times the decoupled term of
  the labelled class, ``-log phi(a; without b)`` (Sec. 3.2's rewritten L^_DM(CE),
  :func:`trainers.losses.as_dm_ce`).

The host adds the result with weight 1. Partners are drawn at random, with the step's generator,
among the unlabelled batch's weak views (distinct partners where the unlabelled batch is at least
as large as the labelled one, TorchSSL's ``uratio >= 1``), and the mixed batch takes its own
forward. Defaults: Mixup; ``eta = 0.1``, the paper's value for static policies (appendix A.3:
CIFAR-100 and ImageNet; Sec. 4.5, Fig. 6 left); ``alpha = 1.0``: the host's mixup alpha would
be the natural choice, and none of the pseudo-labelling algorithms (Pseudo-Label, FixMatch,
FlexMatch, UDA) has one, so 1.0 (Beta(1, 1), uniform ``lam``) stands in; pass the host's own
(e.g. MixMatch's) where it has one. Appendix A.3 says static policies with DM use ``alpha =
0.2`` in the supervised experiments; the paper gives no alpha for Table 7's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from trainers.losses import as_dm_ce
from trainers.mixing.asymmetric import SIDES, AsymmetricBatch, Side, asymmetric_mix
from trainers.mixing.base import LAMBDA_MODES, LambdaMode, SaliencyDetector
from trainers.ssl.base import SemiSupervisedBatch, SemiSupervisedStep
from trainers.ssl.pseudo_labels import cross_entropy
from trainers.vocabulary import AS_DEFAULT_ALPHA, AS_DEFAULT_ETA, STATIC_POLICIES

AsymmetricLoss = Literal["mce", "dm_ce"]
ASYMMETRIC_LOSSES: tuple[str, ...] = get_args(AsymmetricLoss)


@dataclass(frozen=True)
class AsymmetricOutcome:
    """The AS term of one step: its loss and how it was made (for tests and metrics)."""

    loss: Tensor  # scalar: mean per-pair loss over the confident pairs (0 where none is)
    partners: Tensor  # (B,) int64: each labelled image's partner in the unlabelled batch
    lam: Tensor  # (B,) float32: the labelled share of each mixed image
    weight: Tensor  # (B,) float: the host's mask at each partner (1 confident, 0 not)


class AsymmetricTerm(nn.Module):
    """AS mixing of labelled with unlabelled images, and its MCE or DM(CE) loss (Sec. 3.2).

    Keyword settings: ``policy`` (a static policy of :data:`trainers.vocabulary.STATIC_POLICIES`),
    ``alpha`` (Beta(alpha, alpha); ResizeMix draws its own scale), ``loss`` (``"mce"`` or
    ``"dm_ce"``), ``eta`` (weight of the decoupled term; unused by ``"mce"``), ``side``
    (``"labelled_minor"``: ``lam <= 0.5``, the paper's AS; ``"labelled_major"``, Table 9's
    ablation), ``lambda_mode`` and ``saliency_detector`` as for every policy.
    """

    # Sec. 3.2 and Table 7 (FixMatch+Mixup): Mixup is the policy of the "+Mixup" row.
    DEFAULT_POLICY = "mixup"
    # No pseudo-labelling host has a mixup alpha; Beta(1, 1) stands in (module docstring).
    DEFAULT_ALPHA = AS_DEFAULT_ALPHA
    # The weight of the decoupled term for static policies (appendix A.3; Sec. 4.5, Fig. 6).
    DEFAULT_ETA = AS_DEFAULT_ETA
    # Sec. 3.2: AS mixes with lam < 0.5, the labelled class the minor one.
    DEFAULT_SIDE: Side = "labelled_minor"

    def __init__(
        self,
        *,
        policy: str = DEFAULT_POLICY,
        alpha: float = DEFAULT_ALPHA,
        loss: AsymmetricLoss = "dm_ce",
        eta: float = DEFAULT_ETA,
        side: Side = DEFAULT_SIDE,
        lambda_mode: LambdaMode = "batch",
        saliency_detector: SaliencyDetector = "fine_grained",
    ) -> None:
        super().__init__()
        if policy not in STATIC_POLICIES:
            raise ValueError(
                f"AS mixes with a static policy; got {policy!r}, allowed: "
                f"{', '.join(STATIC_POLICIES)}"
            )
        if loss not in ASYMMETRIC_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(ASYMMETRIC_LOSSES)}; got {loss!r}")
        if side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
        if lambda_mode not in LAMBDA_MODES:
            raise ValueError(
                f"lambda_mode must be one of {', '.join(LAMBDA_MODES)}; got {lambda_mode!r}"
            )
        for name, value, low in (("alpha", alpha, 0.0), ("eta", eta, 0.0)):
            finite = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not finite or not low <= value < float("inf") or (name == "alpha" and value == 0):
                bound = "> 0" if name == "alpha" else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
        self.policy = policy
        self.alpha = float(alpha)
        self.loss = loss
        self.eta = float(eta)
        self.side: Side = side
        self.lambda_mode: LambdaMode = lambda_mode
        self.saliency_detector: SaliencyDetector = saliency_detector

    def extra_repr(self) -> str:
        """The settings, in ``print(algorithm)``."""
        return (
            f"policy={self.policy}, alpha={self.alpha}, loss={self.loss}, eta={self.eta}, "
            f"side={self.side}, lambda_mode={self.lambda_mode}"
        )

    def forward(
        self,
        model: nn.Module,
        labelled: Tensor,
        targets: Tensor,
        unlabelled: Tensor,
        pseudo_labels: Tensor,
        mask: Tensor,
        generator: torch.Generator,
    ) -> AsymmetricOutcome:
        """The term for labelled ``(labelled, targets)`` and the host's unlabelled guesses.

        ``unlabelled`` (M, ...) are the weak views the host guessed ``pseudo_labels`` (M,) from,
        ``mask`` (M,) its confidence mask; ``generator`` draws partners and ``lam``.
        """
        n, m = len(labelled), len(unlabelled)
        if pseudo_labels.shape != (m,) or mask.shape != (m,):
            raise ValueError(
                f"pseudo_labels and mask must have shape ({m},), one per unlabelled image; got "
                f"{tuple(pseudo_labels.shape)} and {tuple(mask.shape)}"
            )
        device = labelled.device
        if m >= n:  # distinct partners, as a permutation of the unlabelled batch
            partners = torch.randperm(m, generator=generator, device=device)[:n]
        else:
            partners = torch.randint(m, (n,), generator=generator, device=device)
        partner_images = unlabelled[partners]
        logits, lam = self._mixed_logits(model, labelled, partner_images, generator)
        v_b = pseudo_labels[partners]
        weight = mask[partners].detach().float()
        lam_c = lam.to(torch.promote_types(logits.dtype, torch.float32))
        if self.loss == "mce":
            per_pair = lam_c * cross_entropy(logits, targets) + (1 - lam_c) * cross_entropy(
                logits, v_b
            )
        else:
            per_pair = as_dm_ce(logits, targets, v_b, lam, eta=self.eta, reduction="none")
        # Mean over the confident pairs; the count is clamped, not tested, so no host sync.
        loss = (per_pair * weight).sum() / weight.sum().clamp(min=1)
        return AsymmetricOutcome(loss, partners, lam, weight)

    def _mixed_logits(
        self, model: nn.Module, labelled: Tensor, partners: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Logits of the AS-mixed batch and its ``lam``."""

        def as_mix(first: Tensor, second: Tensor) -> AsymmetricBatch:
            return asymmetric_mix(
                self.policy,
                first,
                second,
                alpha=self.alpha,
                side=self.side,
                generator=generator,
                lambda_mode=self.lambda_mode,
                saliency_detector=self.saliency_detector,
            )

        if self.policy != "manifoldmix":
            mixed = as_mix(labelled, partners)
            return model(mixed.inputs), mixed.lam
        # ManifoldMix mixes the features entering a random stage of the backbone
        # (trainers.backbones' ``mix`` hook): both halves go in, the mixed half comes out. The
        # stage is a Python int for the backbone's control flow: this one policy reads a draw
        # back from the device once per step.
        network = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        stages = int(getattr(network, "mix_stages", 1))
        stage = int(torch.randint(stages, (), generator=generator, device=labelled.device))
        lams: list[Tensor] = []

        def mix(features: Tensor) -> Tensor:
            first, second = features.chunk(2)
            mixed = as_mix(first, second)
            lams.append(mixed.lam)
            return mixed.inputs

        logits = model(torch.cat((labelled, partners)), mix=mix, mix_stage=stage)
        return logits, lams[0]


def pseudo_labelling_step(
    term: AsymmetricTerm | None,
    model: nn.Module,
    batch: SemiSupervisedBatch,
    weak: Tensor,
    generator: torch.Generator,
    *,
    supervised: Tensor,
    unsupervised: Tensor,
    pseudo_labels: Tensor,
    mask: Tensor,
) -> SemiSupervisedStep:
    """A pseudo-labelling algorithm's step: its two losses, plus the AS term where it has one.

    The term (weight 1) mixes the labelled batch with ``weak``, the unlabelled images' view the
    pseudo-labels and ``mask`` come from, and counts with the unsupervised part.
    """
    if term is not None:
        outcome = term(model, batch.labelled, batch.targets, weak, pseudo_labels, mask, generator)
        unsupervised = unsupervised + outcome.loss
    return SemiSupervisedStep(
        loss=supervised + unsupervised,
        supervised=supervised.detach(),
        unsupervised=unsupervised.detach(),
        pseudo_labels=pseudo_labels,
        mask=mask,
    )
