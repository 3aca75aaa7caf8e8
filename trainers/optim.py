"""The optimiser, learning-rate schedule and EMA a recipe (``trainers.recipes``) trains with.

Sec. 4.1 and Table 10 (appendix A.3): SGD with momentum, AdamW or LAMB at the recipe's lr,
scaled linearly to the trial's batch size; a per-step linear warm-up then cosine (or step) decay;
the model EMA of the DeiT recipe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from trainers.recipes import Recipe


def scaled_lr(recipe: Recipe, batch_size: int) -> float:
    """The recipe's lr scaled linearly to ``batch_size``: ``lr * batch_size / recipe.batch_size``.

    The linear scaling rule the DeiT and RSB recipes use to move their lr across batch sizes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    return recipe.lr * batch_size / recipe.batch_size


def build_optimizer(model: nn.Module, recipe: Recipe, batch_size: int) -> torch.optim.Optimizer:
    """The recipe's optimiser at ``scaled_lr(recipe, batch_size)``, built by timm.

    * sgd: ``torch.optim.SGD`` with momentum (Nesterov's where the recipe says), weight decay
      on every parameter as the PyTorch-style and CIFAR recipes train, or not on biases and
      norm parameters (``bias_norm_decay=False``: the semi-supervised recipes, TorchSSL's
      ``bn_wd_skip``).
    * adamw: ``torch.optim.AdamW``; lamb: ``timm.optim.Lamb``. Both put biases and norm
      parameters (every parameter of dimension <= 1, plus the model's ``no_weight_decay()``
      names) in a group without weight decay (timm's ``param_groups_weight_decay``), as DeiT
      and RSB do. timm's Lamb also clips the global gradient norm at 1.0 internally (its
      ``max_grad_norm`` default, which the RSB A3 runs in timm kept).
    """
    lr = scaled_lr(recipe, batch_size)
    if recipe.optimizer == "sgd":
        assert recipe.momentum is not None  # the Recipe validator guarantees it
        return create_optimizer_v2(
            model,
            opt="momentum",
            lr=lr,
            weight_decay=recipe.weight_decay,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            filter_bias_and_bn=not recipe.bias_norm_decay,
        )
    return create_optimizer_v2(
        model,
        opt=recipe.optimizer,
        lr=lr,
        weight_decay=recipe.weight_decay,
        betas=recipe.betas,
        filter_bias_and_bn=True,
    )


def with_head_lr(
    optimizer: torch.optim.Optimizer, head: Iterable[nn.Parameter], scale: float
) -> torch.optim.Optimizer:
    """``optimizer`` rebuilt with the ``head`` parameters at ``scale`` times their group's lr.

    Self-Tuning's ``--lr_ratio 10`` (and tllib's ``Classifier.get_parameters``, OpenMixup's
    ``lr_mult=10``): the new classifier learns at 10 x the lr of the pretrained backbone. Each
    group of ``optimizer`` (weight decay or not, as ``build_optimizer`` split them) is split in
    two, the head's share getting ``lr * scale`` with the group's other settings; the groups
    without the head come first, so ``param_groups[0]`` still carries the base lr. Call it
    before the first step and before building the scheduler (whose base lrs are the groups').
    The groups are replaced in place (``add_param_group``, the public way to set groups; an
    optimiser has no state before its first step) and ``optimizer`` is returned; at
    ``scale == 1`` or without a head parameter in it, it is left as it is.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0; got {scale}")
    ids = {id(p) for p in head}
    groups = optimizer.param_groups
    if scale == 1 or not any(id(p) in ids for g in groups for p in g["params"]):
        return optimizer
    rest, heads = [], []
    for group in groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        body = [p for p in group["params"] if id(p) not in ids]
        top = [p for p in group["params"] if id(p) in ids]
        if body:
            rest.append({**settings, "params": body})
        if top:
            heads.append({**settings, "params": top, "lr": group["lr"] * scale})
    if optimizer.state:
        raise ValueError("set the head's lr before the first step: the optimiser has state")
    groups.clear()
    for group in rest + heads:
        optimizer.add_param_group(group)
    return optimizer


@dataclass
class StepSchedule:
    """The lr factor of optimiser step ``step`` (0-based): linear warm-up, then cosine or steps.

    * ``step < warmup_steps``: ``(step + 1) / (warmup_steps + 1)``, linear from ~0 and reaching
      1 at ``step == warmup_steps``.
    * cosine: ``floor + (1 - floor) * 0.5 * (1 + cos(pi * (step - warmup_steps) /
      (total_steps - warmup_steps)))``, 1 right after warm-up, exactly ``floor`` (a recipe's
      ``min_lr / lr``, 0 in the paper's) at ``step == total_steps``: mmcv's ``CosineAnnealing``
      with ``min_lr = floor * lr``, as OpenMixup's configs use it.
    * step: ``gamma ** (number of milestone steps <= step)``.
    * ssl_cosine: ``cos(7 pi (step - warmup_steps) / (16 (total_steps - warmup_steps)))``,
      FixMatch's decay (Sohn et al., 2020, Sec. 4) as TorchSSL's
      ``get_cosine_schedule_with_warmup`` computes it: 1 at the start, cos(7 pi / 16) ~ 0.195
      at the end.

    A callable object rather than a closure, so that ``LambdaLR.state_dict()`` saves its fields
    with the scheduler's step count.
    """

    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    floor: float = 0.0

    def __call__(self, step: int) -> float:
        """The factor applied to the peak lr at optimiser step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.kind == "ssl_cosine":
            return math.cos(7 * math.pi * progress / 16)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    """A per-step ``torch.optim.lr_scheduler.LambdaLR`` over ``epochs * steps_per_epoch`` steps.

    Call ``scheduler.step()`` once after every ``optimizer.step()``: the lr of optimiser step
    ``s`` (0-based) is the peak lr (the optimiser's lr) times ``StepSchedule(...)(s)``. The
    warm-up lasts ``recipe.warmup_epochs * steps_per_epoch`` steps (Table 10: 5 epochs for
    DeiT and RSB A3; clipped to the run's length for short runs), then the lr decays per step by
    cosine to 0 (Table 10, all three ImageNet procedures; Sec. 4.1) or by ``lr_gamma`` at the
    ``lr_milestones`` fractions of ``epochs``. ``epochs`` is the run's (a trial may override the
    recipe's). State: ``state_dict()`` holds the step count and the schedule's fields;
    ``load_state_dict()`` on a scheduler built the same way resumes the same sequence. Load the
    optimiser's state as well: the lr of the first resumed step is the one the optimiser's
    param groups carry (``LambdaLR.load_state_dict`` does not rewrite it).
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"steps_per_epoch and epochs must be >= 1; got {steps_per_epoch}, {epochs}"
        )
    total = steps_per_epoch * epochs
    schedule = StepSchedule(
        total_steps=total,
        warmup_steps=min(total, round(recipe.warmup_epochs * steps_per_epoch)),
        kind=recipe.schedule,
        milestones=tuple(round(m * epochs) * steps_per_epoch for m in recipe.lr_milestones),
        gamma=recipe.lr_gamma,
        floor=recipe.min_lr / recipe.lr,  # both scale with the batch size alike
    )
    return LambdaLR(optimizer, schedule)


def build_ema(model: nn.Module, recipe: Recipe) -> ModelEmaV3 | None:
    """The EMA of ``model`` at the recipe's decay (Table 10, DeiT: 0.99996), or None.

    timm's ``ModelEmaV3``; update it with ``ema.update(model, step=optimizer_step)`` after each
    optimiser step.
    """
    if recipe.ema_decay is None:
        return None
    return ModelEmaV3(model, decay=recipe.ema_decay)
