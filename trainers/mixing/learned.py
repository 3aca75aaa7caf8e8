"""AutoMix and SAMix in the training loop: the learned policy as one module with a step of its own.

The seam between the loop and a policy that learns (:class:`LearnedMixing`, an ``nn.Module``):

* ``mixing(model, inputs, targets, generator, objective)`` runs one step's forward
  (:class:`LearnedStep`): the momentum encoder's features of the clean batch, the two mixed
  batches of :func:`~trainers.mixing.mix_block.automix_batches`, the backbone's logits on its
  batch, and the losses besides the objective on that batch (the Mix Block's, and the
  objective on the clean batch);
* ``average_gradients(ranks)`` after the backward, before clipping: the Mix Block's gradients
  averaged over the ranks;
* ``step(scaler, model, step)`` after the backbone's optimiser: the Mix Block's own optimiser
  and schedule, stepped through the trial's ``GradScaler`` (which unscales and skips a step
  with inf gradients as it does for the backbone's), then the momentum encoder moved toward
  the backbone;
* ``checkpoint()`` / ``restore(state)``: Mix Block, encoder, optimiser and schedule, so a
  resumed trial continues bitwise (the random draws come from the trial's own generator).

One backward of ``objective + auxiliary`` trains both: the backbone's mixed batch is built with
the mask detached and the Mix Block's batch is classified by the encoder, whose parameters take
no gradient, so the objective reaches only the backbone and the Mix Block loss only the Mix
Block (``AutoMixup.forward_train`` of OpenMixup, openmixup/models/classifiers/automix.py).

The backbone's loss is the trial's objective (MCE, DM(CE), MBCE or DM(BCE)) on its batch, with
lambda the mask's actual share, plus the objective on the clean batch (OpenMixup's
``head_one_q``, weight 1 in every AutoMix and SAMix config; see :meth:`LearnedMixing.mixing`).
Where the recipe clips gradients, one norm covers the backbone and the Mix Block, as mmcv's
``OptimizerHook`` clips every parameter of OpenMixup's model. The backbone follows the trial's
recipe like every other method (Table 10); the Mix Block keeps its config's optimiser
(:class:`LearnedSettings`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.distributed import Ranks, all_sum
from trainers.feature_taps import FeatureTap, mix_block_tap
from trainers.mixing.base import LambdaMode, MixedBatch, mixed_batch
from trainers.mixing.mix_block import (
    AUTOMIX_R18,
    SAMIX_R18,
    MixBlock,
    MixBlockConfig,
    MomentumEncoder,
    MomentumSchedule,
    automix_batches,
    mix_block_loss,
)
from trainers.objectives import Objective

LEARNED_POLICIES = ("automix", "samix")


@dataclass(frozen=True)
class LearnedSettings:
    """A learned policy's settings: its Mix Block, momentum schedule, optimiser and losses.

    ``block.in_channels`` (and the SAMix value network's width, half of it) is a placeholder:
    :class:`LearnedMixing` sets it from the features it reads. The Mix Block's optimiser is SGD
    with ``lr`` decayed by a cosine to ``min_lr`` over the trial's steps (OpenMixup's
    ``mix_block`` parameter group and its ``addtional_scheduler``, or the one schedule of the
    CIFAR configs). ``samix_balance``: SAMix's eta (``neg_weight`` of ``head_mix_k``), not
    DM's; None for AutoMix, whose Mix Block loss is plain mixup cross-entropy.
    ``clean_loss_weight``: ``head_one_q``'s weight on the backbone's clean batch.
    """

    block: MixBlockConfig
    momentum: MomentumSchedule
    lr: float
    min_lr: float
    sgd_momentum: float
    weight_decay: float
    samix_balance: float | None
    clean_loss_weight: float
    source: str


_CONFIGS = "configs/classification"
# CIFAR-100, ResNet-18 / ResNeXt-50: one SGD for everything (lr 0.1, momentum 0.9, wd 1e-4,
# cosine to min_lr 0.05, "mlr5e_2"); momentum 0.999 -> 0.999999; SAMix k = 0.25, eta 0.5.
AUTOMIX_CIFAR = LearnedSettings(
    block=AUTOMIX_R18,
    momentum=MomentumSchedule(0.999, 0.999999),
    lr=0.1,
    min_lr=0.05,
    sgd_momentum=0.9,
    weight_decay=1e-4,
    samix_balance=None,
    clean_loss_weight=1.0,
    source=f"{_CONFIGS}/cifar100/automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py",
)
SAMIX_CIFAR = dataclasses.replace(
    AUTOMIX_CIFAR,
    block=SAMIX_R18,
    samix_balance=0.5,
    source=f"{_CONFIGS}/cifar100/samix/basic/r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py",
)
# Tiny-ImageNet: the Mix Block's own group, lr 0.1 cosine to 1e-3 ("mb_mlr1e_3"); SAMix k = -1.
AUTOMIX_TINY = dataclasses.replace(
    AUTOMIX_CIFAR,
    min_lr=1e-3,
    source=f"{_CONFIGS}/tiny_imagenet/automix/basic/r18_l2_a2_near_mb_mlr1e_3_bb_mlr5e_2.py",
)
SAMIX_TINY = dataclasses.replace(
    SAMIX_CIFAR,
    block=dataclasses.replace(SAMIX_R18, lam_mul_k=-1.0),
    min_lr=1e-3,
    source=f"{_CONFIGS}/tiny_imagenet/samix/basic/r18_l2_a2_bili_val_dp0_mul_mb_mlr1e_3_bb_mlr5e_2.py",
)
# ImageNet ResNet-50: AutoMix embeds lambda (lam_concat), SAMix k = -1 and eta 1 (the head's
# default neg_weight); the Mix Block's group lr 0.1 -> 0.001; momentum 0.999 -> 0.99999.
AUTOMIX_IMAGENET = dataclasses.replace(
    AUTOMIX_CIFAR,
    block=dataclasses.replace(AUTOMIX_R18, lam_concat=True),
    momentum=MomentumSchedule(0.999, 0.99999),
    min_lr=1e-3,
    source=f"{_CONFIGS}/imagenet/automix/basic/r50_l2_a2_near_lam_cat_mb_mlr1e_3_bb_mlr0.py",
)
SAMIX_IMAGENET = dataclasses.replace(
    AUTOMIX_IMAGENET,
    block=dataclasses.replace(SAMIX_R18, lam_mul_k=-1.0),
    samix_balance=1.0,
    source=(
        f"{_CONFIGS}/imagenet/samix/basic/r50/unsampling_modebilinear/"
        "r50_l2_a2_bili_val_dp01_mul_mb_mlr1e_3_m09_bb_mlr0_4xb64_ep300.py"
    ),
)
# CUB-200 and FGVC-Aircraft: fine-tuning from ImageNet weights; the Mix Block's group lr
# 0.01 -> 5e-4, wd 5e-4; AutoMix embeds lambda, SAMix k = 1 and eta 1.
AUTOMIX_FINEGRAINED = dataclasses.replace(
    AUTOMIX_IMAGENET,
    lr=0.01,
    min_lr=5e-4,
    weight_decay=5e-4,
    source=f"{_CONFIGS}/cub200/automix/r18_l2_a2_near_lam_cat_mb_mlr5e_4_1xb16_ep200.py",
)
SAMIX_FINEGRAINED = dataclasses.replace(
    AUTOMIX_FINEGRAINED,
    block=dataclasses.replace(SAMIX_R18, lam_mul_k=1.0),
    samix_balance=1.0,
    source=f"{_CONFIGS}/cub200/samix/r18_l2_a2_bili_val_dp01_mb_mlr5e_4_1xb16_ep200.py",
)
# Stanford Cars: AutoMix's Mix Block at lr 0.1 -> 0.001; OpenMixup has no SAMix Cars config, so
# SAMix takes CUB-200's.
AUTOMIX_CARS = dataclasses.replace(
    AUTOMIX_FINEGRAINED,
    lr=0.1,
    min_lr=1e-3,
    source=f"{_CONFIGS}/cars/automix/basic/r18_automix_nearest.py",
)
WRN_SOURCE = f"{_CONFIGS}/cifar100/automix/basic/wrn28_8_l1_a2_near_L1_01_mlr1e_3.py"

PRESETS: dict[str, dict[str, LearnedSettings]] = {
    "cifar": {"automix": AUTOMIX_CIFAR, "samix": SAMIX_CIFAR},
    "tiny_imagenet": {"automix": AUTOMIX_TINY, "samix": SAMIX_TINY},
    "imagenet": {"automix": AUTOMIX_IMAGENET, "samix": SAMIX_IMAGENET},
    "finegrained": {"automix": AUTOMIX_FINEGRAINED, "samix": SAMIX_FINEGRAINED},
    "cars": {"automix": AUTOMIX_CARS, "samix": SAMIX_FINEGRAINED},
}
_PRESET_OF_DATASET = {
    "cifar10": "cifar",
    "cifar100": "cifar",
    "tiny_imagenet": "tiny_imagenet",
    "imagenet": "imagenet",
    "cub200": "finegrained",
    "aircraft": "finegrained",
    "cars": "cars",
}


def preset_name(dataset: str, image_size: int) -> str:
    """Whose configs a data set trains with; one OpenMixup has none for goes by its image size."""
    if dataset in _PRESET_OF_DATASET:
        return _PRESET_OF_DATASET[dataset]
    return "cifar" if image_size <= 32 else "tiny_imagenet" if image_size <= 64 else "imagenet"


def default_settings(
    method: str, dataset: str, image_size: int, *, wide_resnet: bool = False
) -> LearnedSettings:
    """OpenMixup's settings of ``method`` for the data set (:data:`PRESETS`).

    WRN-28-8 on CIFAR-100 has its own optimiser: lr 0.03 and wd 1e-3, the Mix Block without
    momentum ("momentum=0 performs better in 400ep"), cosine to 1e-3. Departures, kept simple on
    purpose:

    * SAMix's value network has no dropout (``with_last_dropout=0.1`` on ImageNet and CUB);
    * the mask loss weight stays 0.1, where the ImageNet, CUB and Cars configs of both anneal it
      to 0 (``CustomCosineAnnealingHook``);
    * the schedules step per iteration, where OpenMixup's ``CosineAnnealing`` steps per epoch;
    * DeiT and Swin take the ImageNet ResNet settings with their own feature tap: their configs
      train the Mix Block with AdamW, switch it off for 80 % of the steps, start the momentum's
      cosine at 25 % of the run and smooth the clean head's labels (the recipe's smoothing
      applies here, through the objective).
    """
    if method not in LEARNED_POLICIES:
        raise ValueError(f"unknown learned policy {method!r}; allowed: automix, samix")
    settings = PRESETS[preset_name(dataset, image_size)][method]
    if wide_resnet:
        settings = dataclasses.replace(
            settings, lr=0.03, min_lr=1e-3, sgd_momentum=0.0, weight_decay=1e-3, source=WRN_SOURCE
        )
    return settings


class _Tapped(Exception):  # noqa: N818 - a signal, not an error
    """Carries the tapped features out of the encoder's forward, ending it there."""

    def __init__(self, output: Tensor) -> None:
        super().__init__("features tapped")
        self.output = output


@dataclass(frozen=True)
class LearnedStep:
    """One step's forward: the backbone's logits and batch, and the loss the objective lacks.

    ``auxiliary``: the Mix Block loss (it reaches only the Mix Block) plus the weighted
    clean-batch cross-entropy (it reaches only the backbone).
    """

    logits: Tensor
    batch: MixedBatch
    auxiliary: Tensor


class LearnedMixing(nn.Module):
    """AutoMix's or SAMix's Mix Block, its momentum encoder and its optimiser, for one trial.

    Build it after the model (the encoder starts as its copy) and before the first step.
    """

    def __init__(
        self,
        method: str,
        model: nn.Module,
        *,
        dataset: str,
        image_size: int,
        alpha: float,
        lambda_mode: LambdaMode,
        total_steps: int,
        settings: LearnedSettings | None = None,
        samix_balance: float | None = None,
    ) -> None:
        """Build the Mix Block for ``model``'s features, the encoder and the optimiser.

        ``settings``: None picks OpenMixup's (:func:`default_settings`); ``samix_balance``
        replaces SAMix's eta there (refused for AutoMix, whose loss has none).
        """
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {total_steps}")
        from trainers.backbones import WideResNet  # the one backbone with its own optimiser

        self.method = method
        self.settings = settings or default_settings(
            method, dataset, image_size, wide_resnet=isinstance(model, WideResNet)
        )
        if samix_balance is not None:
            if method != "samix":
                raise ValueError(f"samix_balance is SAMix's; method {method!r} has none")
            self.settings = dataclasses.replace(self.settings, samix_balance=samix_balance)
        self.alpha, self.lambda_mode, self.total_steps = alpha, lambda_mode, total_steps
        self.tap: FeatureTap = mix_block_tap(model)
        self.prefix_tokens = int(getattr(getattr(model, "model", model), "num_prefix_tokens", 0))
        self.encoder = MomentumEncoder(model, self.settings.momentum)
        channels = self._probe_channels(image_size, next(model.parameters()).device)
        block = self.settings.block
        # SAMix's value network is half as wide as the features (128 of 256, 512 of 1024).
        hidden = channels // 2 if block.value_hidden is not None else None
        block = dataclasses.replace(block, in_channels=channels, value_hidden=hidden)
        self.mix_block = MixBlock(block).to(next(model.parameters()).device)
        self.optimizer = torch.optim.SGD(
            self.mix_block.parameters(),
            lr=self.settings.lr,
            momentum=self.settings.sgd_momentum,
            weight_decay=self.settings.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=total_steps, eta_min=self.settings.min_lr
        )

    @torch.no_grad()
    def _probe_channels(self, image_size: int, device: torch.device) -> int:
        """The tapped features' channels, from one image through the encoder in eval mode."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            image = torch.zeros(1, 3, image_size, image_size, device=device)
            return int(self.features(image).shape[1])
        finally:
            self.encoder.train(was_training)

    def features(self, inputs: Tensor) -> Tensor:
        """The momentum encoder's feature map of ``inputs`` at the tap, (N, C, h, w), no graph.

        The forward stops at the tap (the hook raises :class:`_Tapped`): the layers after it
        would only move the encoder's own batch-norm statistics, which it never uses (it runs
        in training mode, on batch statistics, as OpenMixup's does).
        """

        def stop(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            raise _Tapped(output)

        module = self.encoder.module.get_submodule(self.tap.module)
        hook = module.register_forward_hook(stop)
        try:
            with torch.no_grad():
                self.encoder(inputs)
        except _Tapped as tapped:
            return self.tap.feature_map(tapped.output, self.prefix_tokens).float()
        finally:
            hook.remove()
        raise RuntimeError(f"the encoder's forward never reached {self.tap.module}")

    def mixing(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        generator: torch.Generator,
        objective: Objective,
    ) -> LearnedStep:
        """The step's forward: both mixed batches, the backbone's logits, the auxiliary loss.

        ``objective`` is the trial's loss; the clean batch takes it too, unmixed (lambda 1, each
        sample its own partner: no decoupled term, the recipe's label smoothing as it is).
        OpenMixup gives the clean batch a head of its own (``head_one_q``, plain or
        label-smoothed CE) beside the mixed batch's (``head_mix_q``); here the one classifier
        of the backbone takes both losses, so a BCE trial (RSB A3) stays BCE throughout.
        """
        batches = automix_batches(
            self.mix_block,
            self.features(inputs),
            inputs,
            targets,
            alpha=self.alpha,
            generator=generator,
            lambda_mode=self.lambda_mode,
            policy=self.method,
        )
        # The Mix Block's batch through the encoder: its parameters take no gradient, so the
        # loss flows back through the mixed image to the mask alone.
        encoder_logits = self.encoder(batches.mix_block_inputs)
        block_loss = mix_block_loss(
            encoder_logits.float(),
            targets,
            targets[batches.mix_block_perm],
            batches.mix_block_lam,
            batches.mix_block_mask,
            self.mix_block.config,
            samix_balance=self.settings.samix_balance,
        )
        auxiliary = block_loss
        if self.settings.clean_loss_weight > 0:
            itself = torch.arange(len(targets), device=targets.device)
            unmixed = mixed_batch(
                inputs, targets, torch.ones(len(targets), device=targets.device), itself
            )
            clean = objective(model(inputs), unmixed)
            auxiliary = auxiliary + self.settings.clean_loss_weight * clean
        return LearnedStep(model(batches.backbone.inputs), batches.backbone, auxiliary)

    def average_gradients(self, ranks: Ranks) -> None:
        """Average the Mix Block's gradients over the ranks (it is not wrapped in DDP).

        Call after the backward and before any clipping, so every rank clips and steps the same
        gradients and the Mix Block stays one. A rank whose Mix Block got no gradient sends
        zeros.
        """
        if ranks.world_size == 1:
            return
        parameters = list(self.mix_block.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = all_sum(torch.cat([g.reshape(-1) for g in grads]), ranks)
        flat.div_(ranks.world_size)
        pieces = flat.split([p.numel() for p in parameters])
        for p, averaged in zip(parameters, pieces, strict=True):
            p.grad = averaged.view_as(p)

    def step(self, scaler: torch.amp.GradScaler, model: nn.Module, step: int) -> None:
        """After the backbone's step: step the Mix Block, then move the encoder toward ``model``.

        ``step`` is the 0-based index of the step just taken, of ``total_steps``. The trial's
        ``GradScaler`` steps the Mix Block's optimiser as it does the backbone's: unscaled, and
        skipped where its gradients are not finite.
        """
        scaler.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.encoder.update(model, step, self.total_steps)

    def checkpoint(self) -> dict[str, object]:
        """What a resumed trial needs: modules, optimiser, schedule."""
        return {
            "modules": self.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def restore(self, state: dict[str, object] | None) -> None:
        """Load what :meth:`checkpoint` saved."""
        if state is None:
            raise ValueError(
                f"the checkpoint holds no Mix Block: it was not written by a {self.method} trial"
            )
        self.load_state_dict(state["modules"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.scheduler.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
