"""ReMixMatch (Berthelot et al. 2020) with TorchSSL's settings (the DM paper's Table 7 baseline).

One step (ReMixMatch paper Algorithm 1; numbers from TorchSSL's
``config/remixmatch/remixmatch_cifar{10,100}_*.yaml``, identical for CIFAR-10 and CIFAR-100, and
USB's ``config/classic_cv/remixmatch/*.yaml``):

1. *Distribution alignment* (ReMixMatch, section "Distribution Alignment"): the softmax ``q`` of the
   weak view is replaced by ``Normalize(q * p(y) / p~(y))``: ``p(y)`` the labelled class
   distribution (uniform for balanced CIFAR; TorchSSL reads it from
   ``data_statistics/<dataset>_<labels>.json``, USB's ``p_target_type='gt'``), ``p~(y)`` the running
   mean of the model's predictions on unlabelled data. The paper averages over the last 128 batches;
   TorchSSL and USB (``DistAlignEMAHook``) keep an exponential moving average with momentum 0.999,
   started at the first batch's mean. The EMA is the default here (the DM paper ran TorchSSL);
   ``alignment="window"`` gives the paper's 128-batch window. :class:`DistributionAlignment` holds
   the state in buffers.
2. *Augmentation anchoring* (section "Augmentation Anchoring"): the guess comes from the weak view
   only, sharpened with ``T = 0.5`` (TorchSSL ``T: 0.5``), and is the target of K strong views
   (TorchSSL and USB K = 2; the paper 8). The views are ``("weak", "strong", "strong")``; the strong
   views are what the loop gives (RandAugment then Cutout, :mod:`trainers.ssl.views`), not
   CTAugment: TorchSSL and USB both train ReMixMatch with RandAugment.
3. *MixUp* as MixMatch's (:func:`trainers.ssl.mixmatch.mix_with_shuffled`, ``max`` fold) over the
   concatenation of the labelled batch, the K strong views and the weak view (TorchSSL and USB mix
   the weak view too), each unlabelled row with the guess; ``alpha = 0.75`` (TorchSSL ``alpha:
   0.75``, USB ``mixup_alpha: 0.75``; MixMatch's 0.5 is not ReMixMatch's).
4. *Losses* (Algorithm 1, section "Putting It All Together"): cross-entropy with soft targets for
   the labelled mixed rows (weight 1) and the unlabelled mixed rows (``w_match = 1.5``, TorchSSL
   ``w_match: 1.5``, USB ``ulb_loss_ratio: 1.5``; TorchSSL's ``ulb_loss_ratio: 1.0`` is unused by
   its ReMixMatch); the pre-mixup loss, cross-entropy of the first strong view, unmixed, against the
   guess (``w_kl = 0.5``, TorchSSL ``w_kl``, USB ``kl_loss_ratio``); the rotation loss (``w_rot =
   0.5``): the first strong view rotated by a uniform multiple of 90 degrees, its rotation predicted
   by a linear head on the backbone's penultimate features (:mod:`trainers.ssl.features`),
   cross-entropy over the 4 rotations. ``w_match`` and ``w_kl`` grow linearly over the first
   ``warm_up = 1/64`` of training (TorchSSL ``warm_up: 0.015625``, USB ``unsup_warm_up: 0.015625``);
   ``w_rot`` does not (neither codebase ramps it).

Batch norm: the guess runs with the running statistics frozen, as in TorchSSL; the mixed batch
goes through in one forward that updates them (TorchSSL's interleaved chunks approximate that
forward, see :mod:`trainers.ssl.mixmatch`); the strong view and its rotated copy go through in
one more forward with the running statistics frozen (TorchSSL: two frozen forwards).

The rotation head is part of this module: its parameters are in ``parameters()`` and
``extra_parameters()``, and the optimiser must be given them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.ssl.base import (
    SemiSupervisedAlgorithm,
    SemiSupervisedBatch,
    SemiSupervisedStep,
    View,
)
from trainers.ssl.features import penultimate_features
from trainers.ssl.forwards import running_statistics_frozen
from trainers.ssl.mixmatch import (
    mix_with_shuffled,
)
from trainers.ssl.pseudo_labels import cross_entropy, linear_warmup, sharpen
from trainers.vocabulary import HOST_MIXUP_ALPHA

__all__ = ["AlignmentMode", "DistributionAlignment", "ReMixMatch", "rotate_quarters"]

AlignmentMode = Literal["ema", "window"]
ROTATIONS = 4  # 0, 90, 180 and 270 degrees (ReMixMatch's rotation loss; TorchSSL's rotate_v_list)


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment, ``Normalize(q * p(y) / p~(y))``, state in buffers.

    ``forward(probs)`` first folds the batch's mean prediction into the running mean ``p~``,
    then returns ``Normalize(probs * target / p~)`` (the order of TorchSSL and USB).

    * ``mode="ema"``: ``p~ <- momentum * p~ + (1 - momentum) * mean``, the first batch's mean to
      start with (TorchSSL, USB ``DistAlignEMAHook``, momentum 0.999);
    * ``mode="window"``: ``p~`` is the mean of the last ``window`` batch means (the paper's 128),
      of those seen so far before the window fills.

    ``target``: the labelled class distribution, normalised to sum 1; ``None``: uniform.
    """

    target: Tensor  # (C,): p(y)
    seen: Tensor  # (): batches folded in so far
    history: Tensor  # (1, C) for the EMA, (window, C) for the window

    def __init__(
        self,
        num_classes: int,
        *,
        target: Sequence[float] | Tensor | None = None,
        mode: AlignmentMode = "ema",
        momentum: float = 0.999,
        window: int = 128,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes!r}")
        if mode not in ("ema", "window"):
            raise ValueError(f"mode must be ema or window; got {mode!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie within [0, 1); got {momentum!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window!r}")
        if target is None:
            p_target = torch.full((num_classes,), 1.0 / num_classes)
        else:
            p_target = torch.as_tensor(target, dtype=torch.float32).flatten()
            if p_target.shape != (num_classes,) or not bool((p_target >= 0).all()):
                raise ValueError(
                    f"target must hold {num_classes} non-negative numbers; got "
                    f"{tuple(p_target.shape)}"
                )
            if not float(p_target.sum()) > 0:
                raise ValueError("target must have a positive sum")
            p_target = p_target / p_target.sum()
        self.mode: AlignmentMode = mode
        self.momentum = float(momentum)
        self.register_buffer("target", p_target.float())
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        rows = 1 if mode == "ema" else window
        self.register_buffer("history", torch.zeros(rows, num_classes))

    def running_mean(self) -> Tensor:
        """``p~(y)``: the model's running mean prediction (zeros before the first batch)."""
        if self.mode == "ema":
            return self.history[0]
        filled = self.seen.clamp(min=1, max=self.history.shape[0]).to(self.history.dtype)
        return self.history.sum(0) / filled  # rows not yet written are zeros

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """Fold the batch's mean prediction into ``p~`` (no host sync: ``seen`` stays a tensor)."""
        mean = probs.detach().float().mean(0)
        if dist.is_available() and dist.is_initialized():
            # Every rank aligns with the mean over the global batch (USB gathers it too), so the
            # ranks' running means stay equal and a checkpoint of one resumes them all.
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        if self.mode == "ema":
            moved = self.momentum * self.history[0] + (1 - self.momentum) * mean
            self.history[0] = torch.where(self.seen == 0, mean, moved)
        else:
            slot = (self.seen % self.history.shape[0]).view(1)
            self.history.index_copy_(0, slot, mean[None])
        self.seen += 1

    @torch.no_grad()
    def forward(self, probs: Tensor) -> Tensor:
        """Update ``p~`` with ``probs`` (N, C), then return them aligned and normalised, float32."""
        self.update(probs)
        # A class the model never predicts (softmax underflow at huge logits) has p~ = 0 and,
        # in this batch, probability 0: the floor keeps 0 / 0 out, the product stays 0.
        model_mean = self.running_mean().clamp_min(torch.finfo(torch.float32).tiny)
        aligned = probs.detach().float() * (self.target / model_mean)
        return aligned / aligned.sum(dim=1, keepdim=True)


def rotate_quarters(images: Tensor, quarters: Tensor) -> Tensor:
    """``images[n]`` turned by ``quarters[n]`` times 90 degrees (``torch.rot90`` over H, W).

    Square images only (a quarter turn of a non-square image would change its shape).
    """
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"rotation needs square (N, C, H, H) images; got {tuple(images.shape)}")
    out = images
    for turns in range(1, ROTATIONS):
        chosen = (quarters == turns).view(-1, 1, 1, 1)
        out = torch.where(chosen, torch.rot90(images, turns, dims=(2, 3)), out)
    return out


class ReMixMatch(SemiSupervisedAlgorithm):
    """ReMixMatch (see the module docstring); the rotation head lives here.

    Args:
        num_classes: classes of the task (the alignment's buffers).
        feature_dim: size of the backbone's penultimate features, the rotation head's input:
            ``trainers.ssl.features.feature_dim(model)``.
        temperature: sharpening temperature (TorchSSL ``T: 0.5``).
        alpha: MixUp's Beta parameter (TorchSSL ``alpha: 0.75``).
        w_match: weight of the mixed unlabelled loss (TorchSSL ``w_match: 1.5``).
        w_kl: weight of the pre-mixup loss on the first strong view (TorchSSL ``w_kl: 0.5``).
        w_rot: weight of the rotation loss (TorchSSL ``w_rot: 0.5``), not ramped.
        warm_up: share of training over which ``w_match`` and ``w_kl`` grow from 0
            (TorchSSL ``warm_up: 0.015625``).
        strong_views: K (TorchSSL 2; the paper 8).
        target_distribution: the labelled class distribution; ``None``: uniform.
        alignment: ``ema`` (TorchSSL, USB) or ``window`` (the paper).
        alignment_momentum: the EMA's momentum (0.999).
        alignment_window: batches in the window (128).

    """

    # TorchSSL's config/remixmatch/remixmatch_cifar10_4000_0.yaml: alpha 0.75.
    ALPHA = HOST_MIXUP_ALPHA["remixmatch"]
    # The default: the weak view and K = 2 strong ones; an instance may have its own K.
    views: tuple[View, ...] = ("weak", "strong", "strong")

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        temperature: float = 0.5,
        alpha: float = ALPHA,
        w_match: float = 1.5,
        w_kl: float = 0.5,
        w_rot: float = 0.5,
        warm_up: float = 1 / 64,
        strong_views: int = 2,
        target_distribution: Sequence[float] | Tensor | None = None,
        alignment: AlignmentMode = "ema",
        alignment_momentum: float = 0.999,
        alignment_window: int = 128,
    ) -> None:
        super().__init__()
        if not temperature > 0 or not alpha > 0:
            raise ValueError(f"temperature and alpha must be > 0; got {temperature!r}, {alpha!r}")
        if min(w_match, w_kl, w_rot, warm_up) < 0:
            raise ValueError("w_match, w_kl, w_rot and warm_up must be >= 0")
        if strong_views < 1:
            raise ValueError(f"strong_views must be >= 1; got {strong_views!r}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1; got {feature_dim!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.w_match, self.w_kl, self.w_rot = float(w_match), float(w_kl), float(w_rot)
        self.warm_up = float(warm_up)
        weak_view: View = "weak"
        strong_view: View = "strong"
        self.views: tuple[View, ...] = (weak_view, *((strong_view,) * strong_views))
        self.alignment = DistributionAlignment(
            num_classes,
            target=target_distribution,
            mode=alignment,
            momentum=alignment_momentum,
            window=alignment_window,
        )
        # TorchSSL's and USB's rot_classifier: one linear layer on the pooled features.
        self.rotation_head = nn.Linear(feature_dim, ROTATIONS)

    def extra_parameters(self) -> list[nn.Parameter]:
        """The rotation head's parameters: the optimiser must update them with the model's."""
        return list(self.rotation_head.parameters())

    def forward(
        self, model: nn.Module, batch: SemiSupervisedBatch, generator: torch.Generator
    ) -> SemiSupervisedStep:
        """One ReMixMatch step; see the module docstring."""
        if len(batch.unlabelled) != len(self.views):
            raise ValueError(
                f"ReMixMatch takes {len(self.views)} unlabelled views {self.views}; "
                f"got {len(batch.unlabelled)}"
            )
        weak, strong = batch.unlabelled[0], batch.unlabelled[1:]
        labelled, labels = batch.labelled, batch.targets.long()
        size, unlabelled_size = labelled.shape[0], weak.shape[0]

        with torch.no_grad(), running_statistics_frozen(model):
            weak_logits = model(weak)
        guess = sharpen(self.alignment(torch.softmax(weak_logits.float(), dim=1)), self.temperature)
        classes = guess.shape[1]

        targets = torch.cat([F.one_hot(labels, classes).float(), guess.repeat(len(strong) + 1, 1)])
        mixed = mix_with_shuffled(
            torch.cat([labelled, *strong, weak]),
            targets,
            alpha=self.alpha,
            lam_fold="mixmatch",
            generator=generator,
        )
        logits = model(mixed.inputs).float()
        supervised = cross_entropy(logits[:size], mixed.targets[:size]).mean()
        match = cross_entropy(logits[size:], mixed.targets[size:]).mean()

        quarters = torch.randint(
            0, ROTATIONS, (unlabelled_size,), generator=generator, device=weak.device
        )
        rotated = rotate_quarters(strong[0], quarters)
        with running_statistics_frozen(model), penultimate_features(model) as captured:
            pair_logits = model(torch.cat([strong[0], rotated]))
        pre_mixup = cross_entropy(pair_logits[:unlabelled_size].float(), guess).mean()
        rotation_logits = self.rotation_head(captured.get()[unlabelled_size:])
        rotation = F.cross_entropy(rotation_logits.float(), quarters)

        ramp = linear_warmup(batch.step, batch.total_steps, self.warm_up)
        unsupervised = (
            self.w_match * ramp * match + self.w_kl * ramp * pre_mixup + self.w_rot * rotation
        )
        return SemiSupervisedStep(
            loss=supervised + unsupervised,
            supervised=supervised.detach(),
            unsupervised=unsupervised.detach(),
            pseudo_labels=guess.argmax(dim=1),
            mask=torch.ones(unlabelled_size, device=guess.device),
        )
