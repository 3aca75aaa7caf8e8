"""Training recipes of the paper as plain data, and the optimiser, schedule, EMA and sampling.

``RECIPES`` holds the settings of Sec. 4.1 and appendix A.3 (Table 10) as ``Recipe`` values:

* ``cifar`` and ``tiny_imagenet``: the small-scale benchmarks of Sec. 4.1 (CIFAR-100 and
  Tiny-ImageNet, CIFAR-style ResNets): SGD, cosine schedule, batch 100, pad-4 random crop and
  flip; 800 epochs at lr 0.1 on CIFAR, 400 epochs at lr 0.2 on Tiny-ImageNet. Table 8 (FGSM)
  trains 400 epochs on CIFAR-100: the override ``{"epochs": 400}``.
* ``imagenet_pytorch``, ``deit`` and ``rsb_a3``: the three ImageNet-1k procedures of Sec. 4.1,
  with every ingredient of Table 10. The PyTorch-style setting trains 100 epochs (Table 10's
  "100/300": 300 is the override ``{"epochs": 300}``).
* ``finegrained``: CUB-200 and FGVC-Aircraft of Sec. 4.1, fine-tuned from ImageNet weights.
* ``smoke``: a tiny CPU recipe for tests and ``dmsweep demo``; not from the paper.

A recipe describes the run at its reference batch size; a trial at another batch size scales
the learning rate linearly (``scaled_lr``) and logs the value it used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from timm.data.auto_augment import rand_augment_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DistributedSampler


class Recipe(BaseModel):
    """One training recipe: optimiser, schedule, regularisers, augmentation and evaluation crop.

    Values are per the paper's Sec. 4.1 and Table 10; ``None`` (or 0, or ``False``) marks an
    ingredient the recipe does not use (Table 10's "×").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["sgd", "adamw", "lamb"] = Field(
        description="sgd (momentum, no Nesterov), adamw, or lamb (timm's Lamb)"
    )
    lr: float = Field(gt=0, description="peak learning rate at the reference batch_size")
    momentum: float | None = Field(
        None, ge=0, lt=1, description="SGD momentum; sgd only (None for adamw and lamb)"
    )
    betas: tuple[float, float] | None = Field(
        None, description="Adam-style (beta1, beta2); adamw and lamb only (None for sgd)"
    )
    weight_decay: float = Field(
        ge=0, description="weight decay; adamw and lamb exempt biases and norm parameters"
    )
    batch_size: int = Field(ge=1, description="reference (global) batch size of the lr")
    epochs: int = Field(ge=1, description="training epochs")
    schedule: Literal["cosine", "step"] = Field(
        "cosine", description="per-step lr decay after warm-up: cosine to 0, or step decay"
    )
    lr_milestones: tuple[float, ...] = Field(
        (0.3, 0.6, 0.9),
        description="step schedule only: fractions of the run's epochs where lr *= lr_gamma "
        "(30/60/90 of 100 epochs, the torchvision step schedule that A.3 replaces by cosine)",
    )
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule only: decay factor")
    warmup_epochs: float = Field(0, ge=0, description="linear warm-up from ~0 to the peak lr")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing epsilon")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate")
    repeated_aug: bool = Field(False, description="repeated augmentation (timm RepeatAugSampler)")
    num_repeats: int = Field(3, ge=1, description="repeated_aug only: copies of each image")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm, or None")
    randaugment: str | None = Field(
        None, description="timm RandAugment config string, e.g. 'rand-m9-mstd0.5-inc1', or None"
    )
    random_erasing: float = Field(0.0, ge=0, le=1, description="random erasing probability")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="model EMA decay, or None")
    test_crop: float = Field(1.0, gt=0, le=1, description="centre-crop ratio at evaluation")
    train_crop: Literal["random_crop", "random_resized_crop"] = Field(
        description="random_crop: pad-4 random crop + flip (CIFAR, Tiny); "
        "random_resized_crop: RandomResizedCrop + flip (ImageNet, fine-grained)"
    )
    mixup_alpha: float | None = Field(
        None, gt=0, description="mixup_cutmix method: Mixup's alpha (Table 10), or None"
    )
    cutmix_alpha: float | None = Field(
        None, gt=0, description="mixup_cutmix method: CutMix's alpha (Table 10), or None"
    )
    switch_prob: float = Field(
        0.5, ge=0, le=1, description="mixup_cutmix method: probability a batch uses CutMix"
    )
    bce: bool = Field(False, description="train with binary cross-entropy (RSB A3)")
    amp: bool = Field(False, description="mixed-precision training")
    pretrained_init: bool = Field(
        False, description="start from ImageNet weights (the trial's backbone weights)"
    )

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float] | None) -> tuple[float, float] | None:
        if betas is not None and not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must lie in [0, 1); got {betas}")
        return betas

    @field_validator("lr_milestones")
    @classmethod
    def _check_milestones(cls, milestones: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(
                f"lr_milestones must be increasing fractions in (0, 1); got {milestones}"
            )
        return milestones

    @field_validator("randaugment")
    @classmethod
    def _check_randaugment(cls, config: str | None) -> str | None:
        # Parse with timm now, so that a typo fails when the trial is read, not mid-training.
        if config is not None:
            try:
                if config.split("-")[0] != "rand":
                    raise ValueError("it must start with 'rand-'")
                rand_augment_transform(config, {})
            except (AssertionError, ValueError, KeyError) as error:
                raise ValueError(
                    f"not a timm RandAugment config ({str(error) or 'bad section'}): {config!r}; "
                    "expected e.g. 'rand-m9-mstd0.5-inc1'"
                ) from None
        return config

    @model_validator(mode="after")
    def _check_optimizer_settings(self) -> Recipe:
        if self.optimizer == "sgd" and (self.momentum is None or self.betas is not None):
            raise ValueError("optimizer 'sgd' needs momentum and no betas (set betas to null)")
        if self.optimizer != "sgd" and (self.betas is None or self.momentum is not None):
            raise ValueError(
                f"optimizer {self.optimizer!r} needs betas and no momentum (set momentum to null)"
            )
        return self


# The paper's recipes. Comments give the source of each group of numbers.
RECIPES: dict[str, Recipe] = {
    # Sec. 4.1, small-scale: SGD, wd 1e-4, momentum 0.9, batch 100, cosine, RandomFlip +
    # RandomCrop with 4 px padding; 800 epochs at lr 0.1 on CIFAR-100 (Table 8: 400 epochs).
    "cifar": Recipe(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=100,
        epochs=800,
        schedule="cosine",
        train_crop="random_crop",
        test_crop=1.0,
    ),
    # Sec. 4.1: as CIFAR, with lr 0.2 and 400 epochs on Tiny-ImageNet.
    "tiny_imagenet": Recipe(
        optimizer="sgd",
        lr=0.2,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=100,
        epochs=400,
        schedule="cosine",
        train_crop="random_crop",
        test_crop=1.0,
    ),
    # Sec. 4.1 (a) and Table 10 "PyTorch": SGD lr 0.1, momentum 0.9, wd 1e-4, batch 256,
    # cosine (A.3: replaces the step decay), 100 epochs (300 as an override), RRC + flip,
    # test crop 0.875, none of the advanced ingredients.
    "imagenet_pytorch": Recipe(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=256,
        epochs=100,
        schedule="cosine",
        train_crop="random_resized_crop",
        test_crop=0.875,
    ),
    # Sec. 4.1 (b) and Table 10 "DeiT".
    "deit": Recipe(
        optimizer="adamw",
        lr=1e-3,
        betas=(0.9, 0.999),
        weight_decay=0.05,
        batch_size=1024,
        epochs=300,
        schedule="cosine",
        warmup_epochs=5,
        label_smoothing=0.1,
        drop_path=0.1,
        repeated_aug=True,
        grad_clip=1.0,
        randaugment="rand-m9-mstd0.5-inc1",  # Table 10: RandAugment 9/0.5
        random_erasing=0.25,
        ema_decay=0.99996,
        train_crop="random_resized_crop",
        test_crop=0.875,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        switch_prob=0.5,  # Sec. 4.1: Mixup or CutMix, 50% switching probability
    ),
    # Sec. 4.1 (c) and Table 10 "RSB A3": LAMB (timm's Lamb keeps its default betas; Table 10
    # lists no momentum), BCE, mixed precision.
    "rsb_a3": Recipe(
        optimizer="lamb",
        lr=8e-3,
        betas=(0.9, 0.999),
        weight_decay=0.02,
        batch_size=2048,
        epochs=100,
        schedule="cosine",
        warmup_epochs=5,
        drop_path=0.05,
        repeated_aug=True,
        randaugment="rand-m6-mstd0.5-inc1",  # Table 10: RandAugment 6/0.5
        train_crop="random_resized_crop",
        test_crop=0.95,
        mixup_alpha=0.1,
        cutmix_alpha=1.0,
        switch_prob=0.5,
        bce=True,
        amp=True,
    ),
    # Sec. 4.1, fine-grained (CUB-200, Aircraft): SGD lr 0.001, wd 5e-4, batch 16, 200 epochs,
    # "standard augmentations" (RRC + flip, 0.875 centre crop), from the official PyTorch
    # ImageNet weights. The paper names no schedule or momentum: cosine and 0.9, as its other
    # SGD recipes.
    "finegrained": Recipe(
        optimizer="sgd",
        lr=1e-3,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=16,
        epochs=200,
        schedule="cosine",
        train_crop="random_resized_crop",
        test_crop=0.875,
        pretrained_init=True,
    ),
    # Not from the paper: a few CPU epochs for tests and the demo.
    "smoke": Recipe(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=64,
        epochs=3,
        schedule="cosine",
        train_crop="random_crop",
        test_crop=1.0,
    ),
}


def get_recipe(name: str, overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe ``name`` with ``overrides`` applied and validated.

    Raises a ValueError listing the recipes for an unknown name, naming the field and listing the
    allowed ones for an unknown override, and naming the field for an invalid value.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ValueError(f"recipe overrides must be a mapping; got {type(overrides).__name__}")
    unknown = [key for key in overrides if key not in Recipe.model_fields]
    if unknown:
        raise ValueError(
            f"unknown recipe field(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(Recipe.model_fields)}"
        )
    values = {**RECIPES[name].model_dump(), **overrides}
    try:
        return Recipe.model_validate(values)
    except ValidationError as error:
        # A plain ValueError: callers inside other pydantic validators wrap it cleanly.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'recipe'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"recipe {name!r} with overrides {overrides}: {problems}") from None


def scaled_lr(recipe: Recipe, batch_size: int) -> float:
    """The recipe's lr scaled linearly to ``batch_size``: ``lr * batch_size / recipe.batch_size``.

    The linear scaling rule the DeiT and RSB recipes use to move their lr across batch sizes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    return recipe.lr * batch_size / recipe.batch_size


def build_optimizer(model: nn.Module, recipe: Recipe, batch_size: int) -> torch.optim.Optimizer:
    """The recipe's optimiser at ``scaled_lr(recipe, batch_size)``, built by timm.

    * sgd: ``torch.optim.SGD`` with momentum, ``nesterov=False`` (timm's "momentum"), weight
      decay on every parameter, as the PyTorch-style and CIFAR recipes train.
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
            filter_bias_and_bn=False,
        )
    return create_optimizer_v2(
        model,
        opt=recipe.optimizer,
        lr=lr,
        weight_decay=recipe.weight_decay,
        betas=recipe.betas,
        filter_bias_and_bn=True,
    )


@dataclass
class StepSchedule:
    """The lr factor of optimiser step ``step`` (0-based): linear warm-up, then cosine or steps.

    * ``step < warmup_steps``: ``(step + 1) / (warmup_steps + 1)``, linear from ~0 and reaching
      1 at ``step == warmup_steps``.
    * cosine: ``0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``,
      1 right after warm-up, exactly 0 at ``step == total_steps``.
    * step: ``gamma ** (number of milestone steps <= step)``.

    A callable object rather than a closure, so that ``LambdaLR.state_dict()`` saves its fields
    with the scheduler's step count.
    """

    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        """The factor applied to the peak lr at optimiser step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


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


def repeated_aug_sampler(
    num_images: int, *, rank: int, world_size: int, num_repeats: int = 3
) -> RepeatAugSampler:
    """A ``timm`` ``RepeatAugSampler`` (DeiT's repeated augmentation) over the images.

    Each epoch every rank draws ``len(sampler)`` indices (about ``num_images / world_size``,
    rounded down to multiples of 256 images in all); the shuffled images are repeated
    ``num_repeats`` times in a row and dealt round robin to the ranks, so the copies of one image
    land on different ranks (on ``world_size >= num_repeats``) and are augmented differently.
    An epoch so sees about ``num_images / num_repeats`` distinct images. Its order depends on
    ``set_epoch`` only (timm seeds it with the epoch number).
    """
    _check_sharding(num_images, rank, world_size)
    return RepeatAugSampler(
        range(num_images),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        num_repeats=num_repeats,
    )


def epoch_order(
    num_images: int,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    repeated_aug: bool,
    num_repeats: int = 3,
) -> Tensor:
    """The image indices (int64) of ``rank`` for one epoch, the same length on every rank.

    Without repeated augmentation: ``torch.utils.data.DistributedSampler`` (shuffle, seed
    ``seed``, ``set_epoch(epoch)``): a permutation sharded round robin, padded by wrapping to a
    multiple of ``world_size``. With it: ``repeated_aug_sampler`` with ``set_epoch(seed +
    epoch)``. Both seed their permutation with ``seed + epoch`` (DistributedSampler's rule), so
    the order is deterministic per (seed, epoch) and changes every epoch; note that seed s + 1
    at epoch e replays seed s at epoch e + 1.
    """
    _check_sharding(num_images, rank, world_size)
    if epoch < 0 or seed < 0:
        raise ValueError(f"epoch and seed must be >= 0; got {epoch}, {seed}")
    sampler: DistributedSampler | RepeatAugSampler
    if repeated_aug:
        sampler = repeated_aug_sampler(
            num_images, rank=rank, world_size=world_size, num_repeats=num_repeats
        )
        sampler.set_epoch(seed + epoch)
    else:
        sampler = DistributedSampler(
            range(num_images),  # type: ignore[arg-type]  # any sized object will do
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
        )
        sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


def _check_sharding(num_images: int, rank: int, world_size: int) -> None:
    if num_images < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            "need num_images >= 1, world_size >= 1 and 0 <= rank < world_size; got "
            f"{num_images}, {world_size}, {rank}"
        )
