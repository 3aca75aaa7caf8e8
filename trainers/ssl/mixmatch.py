"""MixMatch (Berthelot et al. 2019) and MixMatch+DM (Decoupled Mixup, Sec. 3.2 and Table 7).

One step of MixMatch (MixMatch paper, Algorithm 1; numbers from TorchSSL's
``config/mixmatch/mixmatch_cifar{10,100}_*.yaml``, which the DM paper's Sec. 4.4 adopts):

1. *Label guess* (Eq. 6-7 of MixMatch; Sec. 2.2 of the DM paper): the mean of the softmax over
   the K = 2 weak views of each unlabelled image, sharpened with temperature ``T = 0.5``:
   ``Sharpen(p, T)_c = p_c^(1/T) / sum_j p_j^(1/T)``.
2. *MixUp* (Algorithm 1, lines 10-14): the labelled batch (one-hot targets) and the K views of
   the unlabelled batch (each with the guess of its image) are concatenated, ``W``, and mixed
   with a shuffled copy of ``W``: ``x' = lam' x + (1 - lam') x[perm]``, the same for the
   targets, ``lam ~ Beta(alpha, alpha)`` with ``alpha = 0.5`` (TorchSSL; the MixMatch paper used
   0.75) drawn once per batch and ``lam' = max(lam, 1 - lam)`` (Eq. 9), so each mixed sample
   stays closer to its first component, which decides whether it counts as labelled (the first
   ``B`` rows) or unlabelled.
3. *Losses* (Eq. 2-5): the cross-entropy of the labelled rows against their soft mixed targets,
   and the squared L2 distance between the softmax of the unlabelled rows and their targets,
   averaged over rows and classes (TorchSSL's ``F.mse_loss(..., reduction="mean")``), weighted
   by ``lambda_u * min(1, step / (ramp_up * total_steps))``: ``lambda_u = 100``
   (``ulb_loss_ratio: 100`` in TorchSSL's CIFAR-10 *and* CIFAR-100 configs; USB's CIFAR-100
   configs and the MixMatch paper use 150, a constructor argument) and ``ramp_up = 0.4``
   (TorchSSL's ``ramp_up: 0.4``, USB's ``unsup_warm_up: 0.4``).

Batch norm (TorchSSL's "interleave"): TorchSSL runs the label guess with batch-norm running
statistics frozen (``Bn_Controller``), then forwards the mixed batch in chunks of ``B`` after
swapping rows between chunks so that each chunk holds labelled and unlabelled rows alike, and
lets only the first chunk update the running statistics. Interleaving exists because the mixed
batch went through the network in separate forwards; here it goes through in *one* forward, so
batch norm normalises with, and its running statistics follow, the statistics of the whole mixed
batch, which every interleaved chunk only approximated. The label guess also runs in one forward
(the K views concatenated) with the running statistics saved and restored, as TorchSSL does.

MixMatch+DM (``decoupled=True``), the DM paper's "DM(CE) and AS" (Table 7, Sec. 3.2):

* *How MixMatch's pairs map onto AS.* AS mixes a labelled ``x_a`` with an unlabelled ``u_b``,
  ``x = lam x_a + (1 - lam) u_b`` with ``lam <= 0.5``, and adds ``-log phi(a; without b)``, the
  decoupled term of the labelled class only (``trainers.losses.as_dm_ce``). In MixMatch row
  ``n`` of the mixed batch has first component ``W[n]`` (share ``lam'``) and partner
  ``W[perm[n]]``; rows ``n < B`` have a labelled first component and go to the labelled loss.
  MixMatch+DM folds the batch's ``lam`` with AS's ``fold(lam, "labelled_minor")``
  (``lam' = min(lam, 1 - lam)``) instead of MixMatch's ``max``, so a labelled first component
  is the minor share: the rows ``n < B`` whose partner is unlabelled (``perm[n] >= B``) are
  exactly AS samples, ``x = lam' x_n + (1 - lam') u_perm[n]``, and their soft target
  ``lam' e_y + (1 - lam') q`` is AS's ``y^ = lam y_a + (1 - lam) v_b`` with ``v_b`` the partner's
  sharpened guess. Those rows, and only those, get ``eta * (-log phi(a; without b))`` with
  ``a`` the label and ``b = argmax`` of the partner's guess (0 where ``a == b``, or where the
  sample is not mixed: ``min(lam', 1 - lam') <= TWO_CLASS_MIN_SHARE``, as in ``as_dm_ce``).
  Why these rows: AS "only decouples the hard samples anchored in L" (Sec. 3.2), and the
  labelled loss of MixMatch is where a sample anchored in L is scored against its true label.
  Rows with a labelled partner (L-L) are supervised mixup, not AS; rows whose first component
  is unlabelled (U-L, U-U) are scored by the unlabelled L2 loss against guessed labels, where
  the paper wants no decoupled term (it would raise a possibly false pseudo-label, Sec. 2.2).
  The fold applies to the whole batch (one ``lam`` per batch, as in MixMatch), so the other
  rows are mixed with the same ``lam'``.
* The decoupled term is part of the labelled loss (reported in ``supervised``), not ramped:
  ``L_DM = L_MCE + eta * L_DM(CE)`` (Sec. 3.1) attaches it to the labelled mixup loss, whose
  weight is 1 from the first step. ``eta = 0.1``: the paper's value for the static policies
  (Sec. 4.5 (1), Fig. 6), a setting.
* With ``eta = 0`` MixMatch+DM is MixMatch with ``lam_fold="asymmetric"`` (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.losses import TWO_CLASS_MIN_SHARE
from trainers.mixing.asymmetric import fold
from trainers.mixing.base import sample_beta
from trainers.ssl.base import (
    SemiSupervisedAlgorithm,
    SemiSupervisedBatch,
    SemiSupervisedStep,
    View,
)
from trainers.ssl.forwards import running_statistics_frozen
from trainers.ssl.pseudo_labels import cross_entropy, linear_warmup, sharpen
from trainers.vocabulary import AS_DEFAULT_ETA, HOST_MIXUP_ALPHA

__all__ = [
    "LamFold",
    "MixMatch",
    "MixedSamples",
    "as_decoupled_per_sample",
    "mix_with_shuffled",
]

LamFold = Literal["mixmatch", "asymmetric"]
"""``mixmatch``: ``max(lam, 1 - lam)`` (MixMatch Eq. 9); ``asymmetric``: AS's ``min`` fold."""


# --------------------------------------------------------------------------- shared pieces


def _guess(model: nn.Module, views: Sequence[Tensor], temperature: float) -> Tensor:
    """MixMatch's label guess (Eq. 6-7): the sharpened mean softmax over the views, float32.

    One forward of the concatenated views, without gradient and with batch-norm running
    statistics restored afterwards (TorchSSL freezes them for the guess).
    """
    with torch.no_grad(), running_statistics_frozen(model):
        logits = model(torch.cat(tuple(views)))
    probs = torch.softmax(logits.float(), dim=1).view(len(views), views[0].shape[0], -1)
    return sharpen(probs.mean(0), temperature)


class MixedSamples:
    """A batch mixed with a shuffled copy of itself: row ``n`` holds ``lam`` of row ``n``."""

    def __init__(self, inputs: Tensor, targets: Tensor, lam: Tensor, perm: Tensor) -> None:
        self.inputs = inputs  # (N, ...) in the inputs' dtype
        self.targets = targets  # (N, C) float32
        self.lam = lam  # () float32: the first component's share
        self.perm = perm  # (N,) int64: row n's partner


def mix_with_shuffled(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    lam_fold: LamFold,
    generator: torch.Generator,
) -> MixedSamples:
    """MixMatch's MixUp (Algorithm 1, lines 10-14; Eq. 8-11): one lam per batch, then one perm.

    ``lam ~ Beta(alpha, alpha)`` folded by ``lam_fold``; ``perm`` a uniform permutation of all
    rows (TorchSSL's ``mixup_one_target`` shuffles the whole concatenation, labelled and
    unlabelled together). Draws come from ``generator`` in that order.
    """
    device = inputs.device
    raw = sample_beta(alpha, 1, generator, device)[0]
    lam = fold(raw, "labelled_minor" if lam_fold == "asymmetric" else "labelled_major")
    perm = torch.randperm(inputs.shape[0], generator=generator, device=device)
    weight = lam.to(inputs.dtype)
    mixed_inputs = torch.lerp(inputs[perm], inputs, weight)
    lam32 = lam.float()
    mixed_targets = torch.lerp(targets[perm].float(), targets.float(), lam32)
    return MixedSamples(mixed_inputs, mixed_targets, lam32, perm)


# --------------------------------------------------------------------------- the DM term


def as_decoupled_per_sample(
    logits: Tensor, labels: Tensor, partner_targets: Tensor, lam: Tensor, partner_unlabelled: Tensor
) -> Tensor:
    """Per-row ``-log phi(a; without b)`` of AS (DM paper Sec. 3.2, ``L^_DM(CE)``), or 0.

    ``logits`` (R, C) of the mixed rows whose first component is labelled with class
    ``labels`` (R,); ``partner_targets`` (R, C) the partners' targets (a guess, or a one-hot
    label), ``b = argmax``; ``lam`` the labelled share (scalar or (R,)); ``partner_unlabelled``
    (R,) bool. ``phi(a; without b) = exp(z_a) / sum_{c != b} exp(z_c)``, as a negative
    log-likelihood (the sign of ``trainers.losses.as_dm_ce``). The row is 0 where the partner is
    labelled, where ``a == b``, or where ``min(lam, 1 - lam) <= TWO_CLASS_MIN_SHARE``. float32.
    """
    z = logits.float()
    b = partner_targets.argmax(dim=1)
    lse_without_b = torch.logsumexp(z.scatter(1, b[:, None], float("-inf")), dim=1)
    neg_log_phi = lse_without_b - z.gather(1, labels[:, None]).squeeze(1)
    share = torch.minimum(lam, 1 - lam).float().expand(z.shape[0])
    active = partner_unlabelled & (labels != b) & (share > TWO_CLASS_MIN_SHARE)
    return torch.where(active, neg_log_phi, torch.zeros_like(neg_log_phi))


# --------------------------------------------------------------------------- the algorithm


class MixMatch(SemiSupervisedAlgorithm):
    """MixMatch, and MixMatch+DM with ``decoupled=True`` (see the module docstring).

    Args:
        temperature: sharpening temperature ``T`` (MixMatch Eq. 7; TorchSSL ``T: 0.5``).
        alpha: Beta parameter of MixUp (TorchSSL ``alpha: 0.5``; MixMatch paper 0.75).
        lambda_u: weight of the unlabelled L2 loss after the ramp (TorchSSL ``ulb_loss_ratio:
            100`` on CIFAR-10 and CIFAR-100; USB and the MixMatch paper: 150 on CIFAR-100).
        ramp_up: share of training over which ``lambda_u`` grows linearly from 0 (TorchSSL
            ``ramp_up: 0.4``).
        unlabelled_views: K, weak views per unlabelled image (MixMatch Sec. 3.5, K = 2).
        decoupled: MixMatch+DM: AS's fold and the decoupled term on labelled-unlabelled rows.
        eta: weight of the decoupled term (DM paper Sec. 4.5: 0.1 for static mixup).
        lam_fold: how ``lam`` is folded; ``None``: ``asymmetric`` with ``decoupled``, else
            ``mixmatch``. ``asymmetric`` without ``decoupled`` is MixMatch+DM at ``eta = 0``.

    """

    # TorchSSL's config/mixmatch/mixmatch_cifar10_4000_0.yaml: alpha 0.5.
    ALPHA = HOST_MIXUP_ALPHA["mixmatch"]
    # The default K = 2 weak views; an instance built with another K has its own.
    views: tuple[View, ...] = ("weak", "weak")

    def __init__(
        self,
        *,
        temperature: float = 0.5,
        alpha: float = ALPHA,
        lambda_u: float = 100.0,
        ramp_up: float = 0.4,
        unlabelled_views: int = 2,
        decoupled: bool = False,
        eta: float = AS_DEFAULT_ETA,
        lam_fold: LamFold | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0; got {alpha!r}")
        if not lambda_u >= 0 or not eta >= 0 or not ramp_up >= 0:
            raise ValueError(
                f"lambda_u, eta and ramp_up must be >= 0; got {lambda_u!r}, {eta!r}, {ramp_up!r}"
            )
        if unlabelled_views < 1:
            raise ValueError(f"unlabelled_views must be >= 1; got {unlabelled_views!r}")
        if lam_fold not in (None, "mixmatch", "asymmetric"):
            raise ValueError(f"lam_fold must be mixmatch or asymmetric; got {lam_fold!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.lambda_u = float(lambda_u)
        self.ramp_up = float(ramp_up)
        self.decoupled = bool(decoupled)
        self.eta = float(eta)
        self.lam_fold: LamFold = lam_fold or ("asymmetric" if decoupled else "mixmatch")
        weak: View = "weak"
        self.views: tuple[View, ...] = (weak,) * unlabelled_views

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters of the algorithm itself for the optimiser: none for MixMatch."""
        return []

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One MixMatch (or MixMatch+DM) step; see the module docstring."""
        views = batch.unlabelled
        if len(views) != len(self.views):
            raise ValueError(f"MixMatch takes {len(self.views)} unlabelled views; got {len(views)}")
        labelled, labels = batch.labelled, batch.targets.long()
        size = labelled.shape[0]

        guess = _guess(model, views, self.temperature)  # (M, C)
        classes = guess.shape[1]
        targets = torch.cat([F.one_hot(labels, classes).float(), guess.repeat(len(views), 1)])
        mixed = mix_with_shuffled(
            torch.cat([labelled, *views]),
            targets,
            alpha=self.alpha,
            lam_fold=self.lam_fold,
            generator=generator,
        )
        logits = model(mixed.inputs).float()

        supervised = cross_entropy(logits[:size], mixed.targets[:size]).mean()
        if self.decoupled:
            partner = mixed.perm[:size]
            term = as_decoupled_per_sample(
                logits[:size], labels, targets[partner], mixed.lam, partner >= size
            )
            # Mean over the labelled rows: the term is added to the per-sample labelled loss.
            supervised = supervised + self.eta * term.mean()
        l2 = F.mse_loss(torch.softmax(logits[size:], dim=1), mixed.targets[size:])
        weight = self.lambda_u * linear_warmup(batch.step, batch.total_steps, self.ramp_up)
        unsupervised = weight * l2
        return SemiSupervisedStep(
            loss=supervised + unsupervised,
            supervised=supervised.detach(),
            unsupervised=unsupervised.detach(),
            pseudo_labels=guess.argmax(dim=1),
            mask=torch.ones(guess.shape[0], device=guess.device),
        )
