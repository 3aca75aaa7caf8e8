"""Training recipes of the paper as plain data, each with the section or table it comes from.

``RECIPES`` holds the settings of Sec. 4.1 and appendix A.3 (Table 10) as ``Recipe`` values:

* ``cifar`` and ``tiny_imagenet``: the small-scale benchmarks of Sec. 4.1 (CIFAR-100 and
  Tiny-ImageNet, CIFAR-style ResNets): SGD, cosine schedule, batch 100; 800 epochs at lr 0.1 on
  CIFAR, 400 epochs at lr 0.2 on Tiny-ImageNet. The crops are OpenMixup's, whose configurations
  produced Table 1's MCE numbers (the rule of ``search_spaces/paper_results/README.md``): a
  pad-4 random crop with reflected borders and flip on CIFAR, RandomResizedCrop(64) and flip on
  Tiny-ImageNet (Sec. 4.1's text says a pad-4 random crop for both). Table 8 (FGSM) trains 400
  epochs on CIFAR-100: the override ``{"epochs": 400}``. Table 1's WRN-28-8 runs use their own
  lr, weight decay and epochs: per-backbone overrides in ``search_spaces/cifar100_table1.yaml``.
* ``imagenet_pytorch``, ``deit`` and ``rsb_a3``: the three ImageNet-1k procedures of Sec. 4.1,
  with every ingredient of Table 10. The PyTorch-style setting trains 100 epochs (Table 10's
  "100/300": 300 is the override ``{"epochs": 300}``).
* ``finegrained``: CUB-200 and FGVC-Aircraft of Sec. 4.1, fine-tuned from ImageNet weights.
* ``smoke``: a tiny CPU recipe for tests and ``dmsweep demo``; not from the paper.

A recipe describes the run at its reference batch size; a trial at another batch size scales
the learning rate linearly (``trainers.optim.scaled_lr``) and logs the value it used. What a
recipe trains with is built elsewhere: the optimiser, lr schedule and EMA in ``trainers.optim``,
the per-epoch image order in ``trainers.order``, the augmentations in ``trainers.augment``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from timm.data.auto_augment import rand_augment_transform

from trainers.limits import MAX_BATCH_SIZE, MAX_EPOCHS
from trainers.validation import StrictModel


class Recipe(StrictModel):
    """One training recipe: optimiser, schedule, regularisers, augmentation and evaluation crop.

    Values are per the paper's Sec. 4.1 and Table 10; ``None`` (or 0, or ``False``) marks an
    ingredient the recipe does not use (Table 10's "×").
    """

    model_config = ConfigDict(frozen=True)  # StrictModel's refusal of unknown fields, and frozen

    optimizer: Literal["sgd", "adamw", "lamb"] = Field(
        description="sgd (momentum, no Nesterov), adamw, or lamb (timm's Lamb)"
    )
    lr: float = Field(gt=0, description="peak learning rate at the reference batch_size")
    momentum: float | None = Field(
        None, ge=0, lt=1, description="SGD momentum; sgd only (None for adamw and lamb)"
    )
    nesterov: bool = Field(
        False, description="sgd only: Nesterov momentum (the semi-supervised recipes, Sec. 4.4)"
    )
    bias_norm_decay: bool = Field(
        True,
        description="sgd only: weight decay on biases and norm parameters too; false: without "
        "(TorchSSL's bn_wd_skip; adamw and lamb always leave them out)",
    )
    betas: tuple[float, float] | None = Field(
        None, description="Adam-style (beta1, beta2); adamw and lamb only (None for sgd)"
    )
    weight_decay: float = Field(
        ge=0, description="weight decay; adamw and lamb exempt biases and norm parameters"
    )
    batch_size: int = Field(
        ge=1, le=MAX_BATCH_SIZE, description="reference (global) batch size of the lr"
    )
    epochs: int = Field(ge=1, le=MAX_EPOCHS, description="training epochs")
    schedule: Literal["cosine", "step", "ssl_cosine"] = Field(
        "cosine",
        description="per-step lr decay after warm-up: cosine to 0, step decay, or ssl_cosine: "
        "lr * cos(7 pi k / (16 K)) at step k of K (FixMatch's and TorchSSL's, Sec. 4.4)",
    )
    lr_milestones: tuple[float, ...] = Field(
        (0.3, 0.6, 0.9),
        description="step schedule only: fractions of the run's epochs where lr *= lr_gamma "
        "(30/60/90 of 100 epochs, the torchvision step schedule that A.3 replaces by cosine)",
    )
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule only: decay factor")
    warmup_epochs: float = Field(0, ge=0, description="linear warm-up from ~0 to the peak lr")
    min_lr: float = Field(
        0.0,
        ge=0,
        description="cosine only: the lr the decay ends at, at the reference batch_size (scaled "
        "with lr; below lr). 0, every recipe of the paper; OpenMixup's AutoMix and SAMix "
        "configs on CIFAR and Tiny-ImageNet end at 0.05",
    )
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
        description="random_crop: pad-4 random crop + flip (CIFAR); "
        "random_resized_crop: RandomResizedCrop + flip (Tiny-ImageNet, ImageNet, fine-grained)"
    )
    crop_padding_mode: Literal["constant", "reflect"] = Field(
        "constant",
        description="random_crop only: the 4 px border, zeros (constant) or reflected pixels "
        "(reflect, OpenMixup's CIFAR pipeline)",
    )
    rrc_scale: tuple[float, float] = Field(
        (0.08, 1.0),
        description="random_resized_crop only: the range of the crop's share of the image area "
        "(torchvision's default 0.08-1; OpenMixup's fine-grained pipeline 0.5-1)",
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
    head_lr_scale: float = Field(
        1.0,
        gt=0,
        description="the classifier head's lr over the rest's (transfer: 10, Self-Tuning's "
        "--lr_ratio; step-based algorithms only)",
    )

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float] | None) -> tuple[float, float] | None:
        if betas is not None and not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must lie in [0, 1); got {betas}")
        return betas

    @field_validator("rrc_scale")
    @classmethod
    def _check_rrc_scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(
                f"rrc_scale must be (low, high) with 0 < low <= high <= 1; got {scale}"
            )
        return scale

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
        if self.optimizer != "sgd" and (self.nesterov or not self.bias_norm_decay):
            raise ValueError(
                f"nesterov and bias_norm_decay are sgd settings; optimizer {self.optimizer!r} "
                "takes neither (set nesterov: false, bias_norm_decay: true)"
            )
        if self.min_lr and self.schedule != "cosine":
            raise ValueError(
                f"min_lr is where the cosine schedule ends; schedule {self.schedule!r} has none "
                "(set min_lr to 0)"
            )
        if self.min_lr >= self.lr:
            raise ValueError(f"min_lr must be below lr ({self.lr:g}); got {self.min_lr:g}")
        return self


def _sgd(
    crop: Literal["random_crop", "random_resized_crop"],
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    test_crop: float = 1.0,
    **ingredients: Any,
) -> Recipe:
    """An SGD recipe of Sec. 4.1 outside Table 10: momentum 0.9 (no Nesterov) and cosine decay.

    ``crop`` is the training crop, ``test_crop`` the evaluation's centre-crop ratio (1: the
    whole image); ``ingredients`` sets further ``Recipe`` fields.
    """
    return Recipe.model_validate(
        {
            "optimizer": "sgd",
            "lr": lr,
            "momentum": 0.9,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "epochs": epochs,
            "schedule": "cosine",
            "train_crop": crop,
            "test_crop": test_crop,
            **ingredients,
        }
    )


# Table 10 (appendix A.3) laid out as the paper prints it: a row per ingredient, a column per
# ImageNet-1k procedure of Sec. 4.1, (a) PyTorch-style, (b) DeiT and (c) RSB A3. Table 10's "×"
# (not used) is None, 0 or False; an ingredient the table does not list keeps Recipe's default.
_TABLE_10_COLUMNS = ("imagenet_pytorch", "deit", "rsb_a3")
_TABLE_10: dict[str, tuple[object, object, object]] = {
    "optimizer": ("sgd", "adamw", "lamb"),
    "lr": (0.1, 1e-3, 8e-3),
    "momentum": (0.9, None, None),
    # RSB A3's LAMB keeps timm's default betas: Table 10 lists no momentum for it.
    "betas": (None, (0.9, 0.999), (0.9, 0.999)),
    "weight_decay": (1e-4, 0.05, 0.02),
    "batch_size": (256, 1024, 2048),
    # PyTorch-style: Table 10's "100/300"; 300 is the override {"epochs": 300}.
    "epochs": (100, 300, 100),
    # A.3: cosine replaces the PyTorch-style step decay.
    "schedule": ("cosine", "cosine", "cosine"),
    "warmup_epochs": (0, 5, 5),
    "label_smoothing": (0.0, 0.1, 0.0),
    "drop_path": (0.0, 0.1, 0.05),
    "repeated_aug": (False, True, True),
    "grad_clip": (None, 1.0, None),
    # RandAugment 9/0.5 and 6/0.5.
    "randaugment": (None, "rand-m9-mstd0.5-inc1", "rand-m6-mstd0.5-inc1"),
    "random_erasing": (0.0, 0.25, 0.0),
    "ema_decay": (None, 0.99996, None),
    "train_crop": ("random_resized_crop", "random_resized_crop", "random_resized_crop"),
    "test_crop": (0.875, 0.875, 0.95),
    "mixup_alpha": (None, 0.8, 0.1),
    "cutmix_alpha": (None, 1.0, 1.0),
    # Sec. 4.1: Mixup or CutMix, 50% switching probability.
    "switch_prob": (0.5, 0.5, 0.5),
    "bce": (False, False, True),
    "amp": (False, False, True),
}


def _table_10(procedure: str) -> Recipe:
    """The column ``procedure`` of ``_TABLE_10``."""
    column = _TABLE_10_COLUMNS.index(procedure)
    return Recipe.model_validate({row: values[column] for row, values in _TABLE_10.items()})


# The paper's recipes. Comments give the source of each group of numbers.
RECIPES: dict[str, Recipe] = {
    # Sec. 4.1, small-scale: SGD, wd 1e-4, momentum 0.9, batch 100, cosine, RandomFlip +
    # RandomCrop with 4 px padding; 800 epochs at lr 0.1 on CIFAR-100 (Table 8: 400 epochs).
    # The border is reflected, as in OpenMixup's configs/classification/_base_/datasets/
    # cifar100/sz32_bs100.py (RandomCrop(32, padding=4, padding_mode="reflect")); the text names
    # no fill.
    "cifar": _sgd(
        "random_crop",
        lr=0.1,
        weight_decay=1e-4,
        batch_size=100,
        epochs=800,
        crop_padding_mode="reflect",
    ),
    # Sec. 4.1: lr 0.2 and 400 epochs on Tiny-ImageNet, otherwise as CIFAR. The crop is
    # OpenMixup's configs/classification/_base_/datasets/tiny_imagenet/sz64_bs100.py:
    # RandomResizedCrop(64) + flip, evaluated on the whole 64 px image; the configs built on it
    # (configs/classification/tiny_imagenet/mixups/basic/r18_mixups_CE_none.py) produced
    # Table 1's Tiny-ImageNet MCE numbers, while the text says RandomCrop with 4 px padding.
    "tiny_imagenet": _sgd(
        "random_resized_crop", lr=0.2, weight_decay=1e-4, batch_size=100, epochs=400
    ),
    # Sec. 4.1 (a) and Table 10 "PyTorch": none of the advanced ingredients.
    "imagenet_pytorch": _table_10("imagenet_pytorch"),
    # Sec. 4.1 (b) and Table 10 "DeiT".
    "deit": _table_10("deit"),
    # Sec. 4.1 (c) and Table 10 "RSB A3": LAMB, BCE, mixed precision.
    "rsb_a3": _table_10("rsb_a3"),
    # Sec. 4.1, fine-grained (CUB-200, Aircraft): SGD lr 0.001, wd 5e-4, batch 16, 200 epochs,
    # "standard augmentations", from the official PyTorch ImageNet weights. The augmentations,
    # momentum 0.9 and the cosine schedule, which the text does not spell out, are OpenMixup's
    # (configs/classification/cub200/mixups/basic/r18_mixups_CE_none.py and
    # configs/classification/_base_/datasets/cub200/sz224_bs16.py; Aircraft's are the same):
    # RandomResizedCrop(224, scale 0.5-1) + flip, evaluated on a 0.875 centre crop (Resize 256,
    # CenterCrop 224).
    "finegrained": _sgd(
        "random_resized_crop",
        lr=1e-3,
        weight_decay=5e-4,
        batch_size=16,
        epochs=200,
        test_crop=0.875,
        rrc_scale=(0.5, 1.0),
        pretrained_init=True,
    ),
    # Sec. 4.4, semi-supervised (Table 7): "SGD optimizer with a basic learning rate of lr = 0.03
    # adjusted by Cosine Scheduler, the totally 2^20 steps, the batch size of 64 for labeled
    # data", with TorchSSL's settings (the codebase the paper used), from its
    # config/fixmatch/fixmatch_cifar10_4000_0.yaml and train_utils.py: Nesterov momentum 0.9,
    # no weight decay on batch norm and biases (get_optimizer's bn_wd_skip), weight decay 5e-4
    # (CIFAR-10 with WRN-28-2; CIFAR-100 with WRN-28-8 takes 1e-3, fixmatch_cifar100_2500_0.yaml:
    # the override search_spaces/ssl_table7.yaml gives it), lr * cos(7 pi k / (16 K))
    # (get_cosine_schedule_with_warmup, no warm-up), an EMA of the weights at 0.999 (ema_m), which
    # is what is evaluated. The weak view is a flip and a 12.5 % shift with reflected borders
    # (trainers.ssl.views). A semi-supervised run counts steps (TrainConfig.semi_supervised), so
    # the recipe's epochs are not read.
    "ssl": _sgd(
        "random_crop",
        lr=0.03,
        weight_decay=5e-4,
        batch_size=64,
        epochs=1,
        nesterov=True,
        bias_norm_decay=False,
        schedule="ssl_cosine",
        ema_decay=0.999,
        crop_padding_mode="reflect",
    ),
    # Sec. 4.3, transfer learning (Tables 6 and 9): "SGD optimizer with lr = 0.001, momentum 0.9,
    # weight decay 5e-4, 27k steps", from ImageNet weights, with Self-Tuning's settings for the
    # rest (github.com/thuml/Self-Tuning src/main.py and run.sh): Nesterov, the new head at
    # 10 x the lr (--lr_ratio 10), MultiStepLR x0.1 at steps 6k, 12k, 18k and 24k (fractions of
    # the 27k below), 24 labelled images a step (--batch_size 24), RandomResizedCrop(224) and a
    # flip (its TransformTrain, without the RandAugment the DM authors' OpenMixup configs also
    # leave out). Self-Tuning's weight decay is 1e-4; the paper's 5e-4 is followed. Its test
    # averages ten crops of a 256 px resize; one 0.875 centre crop here, as the fine-grained
    # recipe. A transfer run counts steps (TrainConfig.semi_supervised: 27,000 steps in
    # search_spaces/tl_table6.yaml), so the recipe's epochs are not read; no EMA is kept.
    "transfer": _sgd(
        "random_resized_crop",
        lr=1e-3,
        weight_decay=5e-4,
        batch_size=24,
        epochs=1,
        nesterov=True,
        schedule="step",
        lr_milestones=(6 / 27, 12 / 27, 18 / 27, 24 / 27),
        test_crop=0.875,
        head_lr_scale=10.0,
        pretrained_init=True,
    ),
    # Not from the paper: a few CPU epochs for tests and the demo.
    "smoke": _sgd("random_crop", lr=0.1, weight_decay=5e-4, batch_size=64, epochs=3),
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
