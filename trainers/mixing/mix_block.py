"""AutoMix's Mix Block, SAMix's Mixer and their momentum encoder: the pure, loop-free core.

AutoMix (Liu et al., ECCV 2022, "AutoMix: Unveiling the Power of Mixup for Stronger
Classifiers") learns the mixing policy: a small attention module, the *Mix Block*, reads the
feature maps of the two samples of each pair from a momentum (EMA) copy of the classifier and
outputs a pixel mask; the mixed image is ``mask * x_a + (1 - mask) * x_b``. SAMix (Li et al.,
"Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup") keeps the
design and changes the generator (*Mixer*): lambda enters by multiplication, the value
embedding is non-linear, query and key see both samples, and the mask regulariser adds a
variance term. Both papers are implemented by their authors in OpenMixup
(``openmixup/models/classifiers/automix.py``, class ``AutoMixup``, and
``openmixup/models/heads/pmix_block.py``, class ``PixelMixBlock``); every default below names
the OpenMixup file it comes from. The code here is written from those facts, not copied.

One training step (``AutoMixup.forward_train``) has two mixed batches, each with its own lambda
and pairing, both masks drawn by the Mix Block from the momentum encoder's features:

* the *Mix Block batch*: mixed with the live mask, classified by the momentum encoder (whose
  parameters take no gradient) with labels mixed by the *drawn* lambda; its loss plus the mask
  regulariser trains the Mix Block alone (:func:`mix_block_loss`);
* the *backbone batch*: mixed with the mask detached (``mask_bb.clone().detach()`` in
  ``AutoMixup.pixel_mixup``), so the backbone's own mixed-sample loss never reaches the Mix
  Block; it is returned as a :class:`MixedBatch` of the project's convention.

:func:`automix_batches` makes both; :class:`MomentumEncoder` is the EMA copy with OpenMixup's
cosine momentum schedule (``openmixup/core/hooks/momentum_hook.py``, ``CosineScheduleHook``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers import losses
from trainers.mixing.base import (
    LambdaMode,
    MixedBatch,
    check_batch,
    draw_count,
    draw_permutation,
    mixed_batch,
    sample_beta,
)

Upsampling = Literal["nearest", "bilinear"]
MaskLossMode = Literal["L1", "L1+Variance"]

AUTOMIX_R18_CONFIG = "configs/classification/cifar100/automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py"
SAMIX_R18_CONFIG = (
    "configs/classification/cifar100/samix/basic/"
    "r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py"
)


@dataclass(frozen=True)
class MixBlockConfig:
    """The Mix Block's settings (``mix_block`` and ``AutoMixup`` arguments of a config).

    Defaults are AutoMix's CIFAR-100 ResNet-18 config, :data:`AUTOMIX_R18_CONFIG`:

    * ``in_channels=256``: stage-3 features of the CIFAR ResNet-18 (``mask_layer=2``,
      ``out_indices=(2, 3)``), 8 x 8 for a 32 x 32 image, so the mask is upsampled by 4;
    * ``reduction=2``: query/key width ``in_channels // 2``; ``use_scale``: the attention
      logits are divided by ``sqrt(width)``;
    * ``upsampling="nearest"`` (``unsampling_mode=['nearest']``);
    * no lambda embedding (``lam_concat=False``, ``lam_mul=False``: "no lam cat for
      small-scale datasets"); a linear 1 x 1 value (``value_neck_cfg=None``); one projection
      shared by query and key (``x_qk_concat=False``); no norm after q, k (``att_norm_cfg``
      commented out);
    * ``mask_loss_mode="L1"``, ``mask_loss_margin=0.1``, ``mask_loss=0.1`` (its weight);
    * ``lam_margin=0.08``: the backbone batch falls back to plain Mixup when ``lam`` or
      ``1 - lam`` is at most 0.08;
    * ``init_std=0.01``: ``PixelMixBlock.init_weights`` (normal, std 0.01, bias 0; norms 1, 0).

    :data:`SAMIX_R18` holds SAMix's CIFAR-100 ResNet-18 values.
    """

    in_channels: int = 256
    reduction: int = 2
    use_scale: bool = True
    upsampling: Upsampling = "nearest"
    # Lambda embedding. AutoMix's: lambda as one more channel (1 - lambda for the b side).
    lam_concat: bool = False
    # SAMix's: features scaled by the rescaled lambda r, by (1 + r * lam_mul) with lam_residual.
    lam_mul: float = 0.0
    lam_mul_k: float = -1.0  # < 0: r = lambda; else SAMix's cubic rescaling with this k
    lam_residual: bool = False
    # SAMix's non-linear value: conv1x1 -> BN -> ELU -> conv1x1 (OpenMixup ConvNeck), this wide.
    value_hidden: int | None = None
    # SAMix: query and key both read cat(a, b), with separate projections.
    x_qk_concat: bool = False
    mask_loss_mode: MaskLossMode = "L1"
    mask_loss_margin: float = 0.1
    mask_loss_weight: float = 0.1
    lam_margin: float = 0.08
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.reduction < 1:
            raise ValueError("in_channels and reduction must be >= 1")
        if self.upsampling not in ("nearest", "bilinear"):
            raise ValueError(f"upsampling must be nearest or bilinear; got {self.upsampling!r}")
        if self.mask_loss_mode not in ("L1", "L1+Variance"):
            raise ValueError(
                f"mask_loss_mode must be L1 or L1+Variance; got {self.mask_loss_mode!r}"
            )
        if not 0 <= self.lam_mul <= 1:
            raise ValueError(f"lam_mul must lie within [0, 1]; got {self.lam_mul!r}")
        if self.lam_concat and (self.lam_mul > 0 or self.x_qk_concat):
            # PixelMixBlock asserts the same: the two embeddings exclude each other, and with
            # x_qk_concat both sides of q, k already hold both samples.
            raise ValueError("lam_concat excludes lam_mul and x_qk_concat")
        if not 0 <= self.lam_margin < 0.5:
            raise ValueError(f"lam_margin must lie within [0, 0.5); got {self.lam_margin!r}")


AUTOMIX_R18 = MixBlockConfig()
# SAMIX_R18_CONFIG: bilinear upsampling, lam_mul=True (1.0) with lam_residual and lam_mul_k=0.25
# ("0.25 for CIFAR"), value ConvNeck 256 -> 128 -> 1 (BN, ELU, no dropout: "dp0"),
# x_qk_concat=True, mask_loss_mode="L1+Variance" with margin 0.1 and weight 0.1, lam_margin 0.08.
SAMIX_R18 = MixBlockConfig(
    upsampling="bilinear",
    lam_mul=1.0,
    lam_mul_k=0.25,
    lam_residual=True,
    value_hidden=128,
    x_qk_concat=True,
    mask_loss_mode="L1+Variance",
)
# Beta(alpha, alpha) of both lambdas: alpha=2.0 in both configs.
AUTOMIX_ALPHA = 2.0


def rescale_lambda_mul(lam: Tensor, k: float) -> Tensor:
    """SAMix's lambda rescaling before multiplying it into the features (``lam_mul_k``).

    ``r(lam) = (4/3 lam^3 - 2 lam^2 + K lam) / (K - 2/3)`` with ``K = k + 1``
    (``PixelMixBlock.rescale_lam_mult``): ``r(0) = 0``, ``r(1/2) = 1/2``, ``r(1) = 1``; a
    smaller ``k`` bends the curve further from the identity. ``k < 0`` means no rescaling.
    """
    if k < 0:
        return lam
    big_k = min(k, 10.0) + 1.0  # PixelMixBlock caps k at 10
    return (4 / 3 * lam**3 - 2 * lam**2 + big_k * lam) / (big_k - 2 / 3)


class MixBlock(nn.Module):
    """The Mix Block (AutoMix) / Mixer (SAMix): features of a pair and lambda -> the a-side mask.

    With ``z_a, z_b`` the (lambda-embedded) features of the two samples, the module computes,
    as AutoMix's Mix Block does (cross-attention between the pair, then a value map of b):

    * query ``q = W_q z_a`` and key ``k = W_k z_b`` (1 x 1 convolutions; ``W_k = W_q`` in
      AutoMix, separate and both reading ``cat(z_a, z_b)`` in SAMix);
    * the pairwise weights ``P = softmax_j(q_i . k_j / sqrt(d))`` over the h x w positions;
    * the value ``v = W_v z_b`` (one channel; non-linear in SAMix);
    * the b-side mask ``m_b = sigmoid(Up(P v))``, upsampled to the image and then squashed,
      in that order, as ``PixelMixBlock.forward`` does; the a side is ``1 - m_b``.

    The attention runs in float32 whatever the autocast state (OpenMixup forces fp32 there:
    fp16 overflows the HW x HW logits).
    """

    def __init__(self, config: MixBlockConfig = AUTOMIX_R18) -> None:
        super().__init__()
        self.config = config
        c = config.in_channels
        self.width = max(c // config.reduction, 1)
        qk_in = 2 * c if config.x_qk_concat else c + int(config.lam_concat)
        v_in = c + int(config.lam_concat)
        self.value: nn.Module
        if config.value_hidden is None:
            self.value = nn.Conv2d(v_in, 1, kernel_size=1)
        else:
            # ConvNeck(num_layers=2, kernel_size=1, with_bias=False, norm BN, act ELU).
            self.value = nn.Sequential(
                nn.Conv2d(v_in, config.value_hidden, kernel_size=1, bias=False),
                nn.BatchNorm2d(config.value_hidden),
                nn.ELU(),
                nn.Conv2d(config.value_hidden, 1, kernel_size=1, bias=False),
            )
        self.query = nn.Conv2d(qk_in, self.width, kernel_size=1)
        self.key = nn.Conv2d(qk_in, self.width, kernel_size=1) if config.x_qk_concat else None
        self.reset_parameters(config.init_std)

    def reset_parameters(self, std: float) -> None:
        """Normal(0, std) weights and zero biases for convolutions, identity norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _embed_lambda(self, z_a: Tensor, z_b: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        lam = lam.to(z_a.dtype).view(-1, 1, 1, 1)
        if cfg.lam_mul > 0:
            r = rescale_lambda_mul(lam, cfg.lam_mul_k)
            if cfg.lam_residual:
                z_a, z_b = z_a * (1 + r * cfg.lam_mul), z_b * (1 + (1 - r) * cfg.lam_mul)
            else:
                z_a, z_b = z_a * r, z_b * (1 - r)
        if cfg.lam_concat:
            plane = lam.expand(-1, 1, *z_a.shape[2:])
            z_a, z_b = torch.cat((z_a, plane), 1), torch.cat((z_b, 1 - plane), 1)
        return z_a, z_b

    def forward(
        self,
        features_a: Tensor,
        features_b: Tensor,
        lam: Tensor,
        image_size: tuple[int, int],
        upsampling: Upsampling | None = None,
    ) -> Tensor:
        """The a-side mask, shape (N, 1, H, W), in [0, 1]; differentiable in the parameters.

        Args:
            features_a: momentum-encoder features of the a samples, (N, C, h, w).
            features_b: those of their partners (``features_a[perm]``), same shape.
            lam: lambda per sample, shape (N,) (one value repeated in ``batch`` mode).
            image_size: (H, W) of the images the mask is applied to.
            upsampling: override of ``config.upsampling`` (``mask_up_override``).

        """
        if features_a.shape != features_b.shape or features_a.dim() != 4:
            raise ValueError(
                f"features must be two (N, C, h, w) tensors of one shape; got "
                f"{tuple(features_a.shape)} and {tuple(features_b.shape)}"
            )
        n, _, h, w = features_a.shape
        if lam.shape != (n,):
            raise ValueError(f"lam must have shape ({n},); got {tuple(lam.shape)}")
        z_a, z_b = self._embed_lambda(features_a, features_b, lam)
        v = self.value(z_b).reshape(n, 1, h * w).transpose(1, 2)  # (N, hw, 1)
        if self.key is not None:
            both = torch.cat((z_a, z_b), 1)
            q, k = self.query(both), self.key(both)
        else:
            q, k = self.query(z_a), self.query(z_b)
        q = q.reshape(n, self.width, h * w).transpose(1, 2)  # (N, hw, d)
        k = k.reshape(n, self.width, h * w)  # (N, d, hw)
        with torch.autocast(device_type=features_a.device.type, enabled=False):
            logits = torch.bmm(q.float(), k.float())
            if self.config.use_scale:
                logits = logits / math.sqrt(self.width)
            attention = logits.softmax(dim=-1)
            mask_b = torch.bmm(attention, v.float()).reshape(n, 1, h, w)
            mode = upsampling or self.config.upsampling
            mask_b = F.interpolate(mask_b, size=tuple(image_size), mode=mode)
            return 1 - torch.sigmoid(mask_b)


def mask_regulariser(mask_a: Tensor, lam: Tensor, config: MixBlockConfig = AUTOMIX_R18) -> Tensor:
    """The mask loss of the Mix Block, unweighted (``PixelMixBlock.mask_loss``).

    ``L1`` (AutoMix, "L1_01" in the config name): ``max(|mean(m_a) - lambda| - margin, 0)``
    pulls the mask's share of the a side to within ``margin`` (0.1) of the drawn lambda.
    OpenMixup takes ``mean(m_a)`` over the whole batch against its one lambda. Here each
    sample's share meets its own lambda and the hinge is averaged over the batch; with one
    lambda per batch (``batch`` mode) that is OpenMixup's value whenever every sample's gap has
    the same sign, and with per-sample lambdas no sample's gap cancels another's.

    ``L1+Variance`` (SAMix, "L1_var_01"): the L1 term minus twice the variance of the mask
    about its batch mean, over all samples and pixels, which rewards masks that commit (pixels
    near 0 or 1) rather than blend.
    """
    n = mask_a.shape[0]
    share = mask_a.float().reshape(n, -1).mean(1)
    loss = ((share - lam.float()).abs() - config.mask_loss_margin).clamp(min=0).mean()
    if config.mask_loss_mode == "L1+Variance":
        centred = mask_a.float() - mask_a.float().mean()
        loss = loss - 2 * centred.pow(2).mean().clamp(min=0)
    return loss


ClassLoss = Literal["softmax", "sigmoid"]


def samix_balanced_loss(
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: Tensor,
    *,
    samix_balance: float,
    kind: ClassLoss = "softmax",
) -> Tensor:
    """SAMix's eta-balanced mixup loss of the Mixer; ``samix_balance`` is SAMix's eta.

    SAMix splits the mixup objective into a local term (the two mixed classes) and a global
    one (discrimination from the other classes) and weighs the global one by eta. OpenMixup
    writes it as class weights on the mixed-label loss (``ClsMixupHead.loss``, ``neg_weight``,
    "eta in SAMix"): weight 1 on classes with label > 0, ``samix_balance`` on the others; the
    loss is summed over classes and averaged over the batch (``avg_factor=N``).

    * ``kind="sigmoid"``: binary cross-entropy per class, the form in which the weight acts.
    * ``kind="softmax"``: soft cross-entropy ``-sum_c w_c y_c log p_c``, what
      :data:`SAMIX_R18_CONFIG` selects (``use_soft=True``, ``neg_weight=0.5``). There every
      class with weight ``samix_balance`` has label 0, so the weight multiplies zeros and the
      loss equals plain mixup cross-entropy whatever ``samix_balance`` is.

    Not DM's eta (``trainers.losses.dm_ce``), which weighs a decoupled term.
    """
    if not 0 <= samix_balance <= 1:
        raise ValueError(f"samix_balance must lie within [0, 1]; got {samix_balance!r}")
    num_classes = logits.shape[1]
    lam = lam.detach().float().view(-1, 1)
    target = lam * F.one_hot(y_a, num_classes) + (1 - lam) * F.one_hot(y_b, num_classes)
    weight = torch.where(target > 0, 1.0, float(samix_balance))
    z = logits.float()
    if kind == "softmax":
        per_class = -target * F.log_softmax(z, dim=1)
    elif kind == "sigmoid":
        per_class = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    else:
        raise ValueError(f"kind must be softmax or sigmoid; got {kind!r}")
    return (weight * per_class).sum(1).mean()


def mix_block_loss(
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: Tensor,
    mask_a: Tensor,
    config: MixBlockConfig = AUTOMIX_R18,
    *,
    samix_balance: float | None = None,
) -> Tensor:
    """The loss that trains the Mix Block (``loss_mix_k`` + ``mask_loss`` of ``AutoMixup``).

    ``logits`` must be the momentum encoder's on the Mix Block batch (mixed with the live
    ``mask_a``), so the gradient reaches the Mix Block through the mixed image only: the
    momentum encoder's parameters take none (``requires_grad=False`` in ``AutoMixup``, an EMA
    of the backbone) and the backbone is not in the graph. Labels are mixed by the *drawn*
    ``lam``: the mask is asked to carry that much of each class, and the regulariser holds its
    share near ``lam``.

    The classification term is mixup cross-entropy (AutoMix: ``head_mix`` with plain CE), or
    :func:`samix_balanced_loss` when ``samix_balance`` is given (SAMix's ``head_mix_k``);
    the regulariser enters with ``config.mask_loss_weight`` (``mask_loss=0.1``).
    """
    if samix_balance is None:
        classification = losses.mce(logits, y_a, y_b, lam.detach())
    else:
        classification = samix_balanced_loss(
            logits, y_a, y_b, lam, samix_balance=samix_balance, kind="softmax"
        )
    return classification + config.mask_loss_weight * mask_regulariser(mask_a, lam, config)


@dataclass(frozen=True)
class AutoMixBatches:
    """One step's two mixed batches (``img_mix_mb`` and ``img_mix_bb`` of ``AutoMixup``).

    ``mix_block_*``: the batch that trains the Mix Block; ``mix_block_inputs`` carries the
    graph back to it. ``backbone``: the batch that trains the backbone, mask detached, with
    ``lam`` the mask's actual share of the a side per sample (the project's convention);
    ``backbone_drawn_lam`` is the lambda drawn for it, which OpenMixup uses as the label
    weight instead.
    """

    mix_block_inputs: Tensor
    mix_block_mask: Tensor
    mix_block_lam: Tensor
    mix_block_perm: Tensor
    backbone: MixedBatch
    backbone_drawn_lam: Tensor


def automix_batches(
    mix_block: MixBlock,
    features: Tensor,
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float = AUTOMIX_ALPHA,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
    policy: str = "automix",
) -> AutoMixBatches:
    """Draw two lambdas and two pairings and mix both batches of a step.

    ``features`` are the momentum encoder's stage features of ``inputs`` (OpenMixup:
    ``backbone_k(img)[0]``); they are detached here, so nothing flows back into the encoder.
    Draws, all from ``generator``: the Mix Block's lambda, the backbone's lambda (Beta(alpha,
    alpha), one or N each by ``lambda_mode``), then the Mix Block's pairing and the backbone's.

    The backbone's mask is the Mix Block's output detached, replaced by the constant ``lam``
    (plain Mixup) for samples with ``lam`` or ``1 - lam`` at most ``config.lam_margin``.
    """
    check_batch(inputs, targets, generator, images=True, alpha=alpha, lambda_mode=lambda_mode)
    n, device = inputs.shape[0], inputs.device
    count = draw_count(n, lambda_mode)
    lam_mb = sample_beta(alpha, count, generator, device).float().expand(n).contiguous()
    lam_bb = sample_beta(alpha, count, generator, device).float().expand(n).contiguous()
    perm_mb = draw_permutation(n, generator, device)
    perm_bb = draw_permutation(n, generator, device)
    z = features.detach()
    size = (inputs.shape[2], inputs.shape[3])

    mask_mb = mix_block(z, z[perm_mb], lam_mb, size)
    mixed_mb = mask_mb * inputs + (1 - mask_mb) * inputs[perm_mb]

    # The backbone's mask: computed without a graph, the same as detaching it afterwards.
    with torch.no_grad():
        mask_bb = mix_block(z, z[perm_bb], lam_bb, size)
    margin = mix_block.config.lam_margin
    plain = (lam_bb <= margin) | (lam_bb >= 1 - margin)
    mask_bb = torch.where(plain.view(-1, 1, 1, 1), lam_bb.view(-1, 1, 1, 1), mask_bb)
    mixed_bb = mask_bb * inputs + (1 - mask_bb) * inputs[perm_bb]
    share = mask_bb.reshape(n, -1).mean(1)
    return AutoMixBatches(
        mix_block_inputs=mixed_mb,
        mix_block_mask=mask_mb,
        mix_block_lam=lam_mb,
        mix_block_perm=perm_mb,
        backbone=mixed_batch(mixed_bb, targets, share, perm_bb, policy=policy),
        backbone_drawn_lam=lam_bb,
    )


@dataclass(frozen=True)
class MomentumSchedule:
    """The EMA momentum by step: OpenMixup's ``CosineScheduleHook`` as both configs set it.

    ``momentum=0.999`` (``AutoMixup``), ``end_momentum=0.999999``, ``adjust_scope=[0.1, 1.0]``,
    ``warming_up="constant"``, ``update_interval=1`` (:data:`AUTOMIX_R18_CONFIG`,
    :data:`SAMIX_R18_CONFIG`). For ``step < int(start_fraction * total)`` the momentum is
    ``base``; from there to the end it is ``end - (end - base) * (cos(pi * step / total) + 1)
    / 2``, a cosine over the *whole* run, entered at its value at 10 % (so it jumps slightly
    at the start of the scope, as OpenMixup's does). The hook's ``restart_step`` never fires.
    """

    base: float = 0.999
    end: float = 0.999999
    start_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.base <= self.end <= 1:
            raise ValueError(f"need 0 <= base <= end <= 1; got {self.base}, {self.end}")
        if not 0 <= self.start_fraction <= 1:
            raise ValueError(f"start_fraction must lie within [0, 1]; got {self.start_fraction}")

    def __call__(self, step: int, total_steps: int) -> float:
        """The momentum of the update after 0-based step ``step`` of ``total_steps``."""
        if total_steps < 1 or not 0 <= step <= total_steps:
            raise ValueError(
                f"need 0 <= step <= total_steps, total >= 1; got {step}, {total_steps}"
            )
        if step < int(total_steps * self.start_fraction):
            return self.base
        cosine = (math.cos(math.pi * step / total_steps) + 1) / 2
        return self.end - (self.end - self.base) * cosine


class MomentumEncoder(nn.Module):
    """An EMA copy of a classifier (backbone and head): AutoMix's ``backbone_k`` / ``head_*_k``.

    The copy starts equal to the model and never takes gradients (``requires_grad=False``),
    so a loss through it, the Mix Block's, updates only what produced its input. After each
    training step, :meth:`update` sets ``p_k <- m p_k + (1 - m) p_q`` for every parameter, with
    ``m`` from the schedule; ``m >= 1`` leaves it unchanged (``AutoMixup.momentum_update``).
    Buffers (BatchNorm statistics) are not averaged, as in OpenMixup: the copy runs forward in
    training mode and keeps its own.
    """

    def __init__(self, model: nn.Module, schedule: MomentumSchedule | None = None) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.schedule = schedule or MomentumSchedule()

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        """The copy's output."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, total_steps: int) -> float:
        """Move the copy toward ``model`` after step ``step``; returns the momentum used."""
        m = self.schedule(step, total_steps)
        if m >= 1:
            return m
        ema = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema[name].mul_(m).add_(p.detach(), alpha=1 - m)
        return m
