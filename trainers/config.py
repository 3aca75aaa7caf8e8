"""``TrainConfig``: everything one trial (one grid cell with one seed) trains with.

``dmsweep train TRIAL.yaml`` reads exactly this model, and a sweep spec expands into a list of
them. Every error names the field and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainers.backbones import BACKBONE_OPTIONS, check_options
from trainers.data.datasets import DATASETS, SYNTHETIC_IMAGES
from trainers.limits import (
    MAX_BATCH_SIZE,
    MAX_CLASS_NAME,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_STEPS,
    MAX_SYNTHETIC_IMAGES,
    MAX_UNLABELLED_RATIO,
)
from trainers.mixing.base import LambdaMode, SaliencyDetector
from trainers.objectives import objective
from trainers.recipes import Recipe, get_recipe
from trainers.validation import StrictModel, describe_errors
from trainers.vocabulary import (
    ALGORITHMS,
    AS_ALGORITHMS,
    BOUNDS,
    DEFAULT_AS_SIDE,
    LABELLED_MIXING,
    LABELLED_ONLY,
    LOSSES,
    METHODS,
    SEMI_SUPERVISED,
    SEMI_SUPERVISED_CELLS,
    SOFTMAX_LOSSES,
    TRANSFER,
    AsSide,
    takes_alpha,
)

M = TypeVar("M", bound=BaseModel)


def _fraction_or_count(amount: float) -> float:
    if amount > 1 and not float(amount).is_integer():
        raise ValueError(
            f"must be a fraction in (0, 1] or a whole count of labels > 1; got {amount!r}"
        )
    return amount


def _distinct(names: list[str]) -> list[str]:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class names must be distinct; given more than once: {repeated}")
    return names


class DataSettings(StrictModel):
    """Where a data set lives and which part of it is used (a sweep spec's ``data.<name>``)."""

    source: str | None = Field(None, description="cifar, imagefolder, parquet or synthetic")
    root: str | None = Field(None, description="default: $DMSWEEP_DATA_ROOT/<name>")
    image_size: int | None = Field(
        None, ge=8, le=MAX_IMAGE_SIZE, description="default: the data set's own"
    )
    classes: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_CLASS_NAME)]],
            AfterValidator(_distinct),
        ]
        | None
    ) = Field(
        None,
        min_length=2,
        max_length=MAX_CLASSES,
        description="keep only these classes (folder / class names), in every split, labelled "
        "0..k-1 in this order (transfer between classes of one data set)",
    )
    subset: int | None = Field(
        None, ge=1, le=MAX_IMAGES, description="keep N training images, class-balanced"
    )
    test_subset: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGES,
        description="evaluate on N test images, class-balanced (quick runs)",
    )
    label_fraction: Annotated[float | int, AfterValidator(_fraction_or_count)] | None = Field(
        None,
        gt=0,
        description="keep labels for a fraction in (0, 1] or a whole count (> 1) of images",
    )
    num_classes: int | None = Field(None, ge=2, le=MAX_CLASSES, description="synthetic data only")
    synthetic_images: (
        dict[
            Literal["train", "test", "val"],
            Annotated[int, Field(ge=1, le=MAX_SYNTHETIC_IMAGES)],
        ]
        | None
    ) = Field(
        None,
        description="synthetic data only: images per split, e.g. {train: 2000, test: 1000}; "
        f"at most {MAX_SYNTHETIC_IMAGES:,} each",
    )
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes that decode and augment per sample (photos, "
        "RandAugment); 0: in the training process; default: the CPUs less one, at most 8",
    )


class DataConfig(DataSettings):
    """Which images: a data set name, where it lives and which part of it is used."""

    name: str = Field(description="cifar10, cifar100, tiny_imagenet, cub200, ... or synthetic")


class BackboneSettings(StrictModel):
    """Options and initial weights of a backbone (a sweep spec's ``backbones.<name>``)."""

    options: dict[str, Any] = Field(
        default_factory=dict,
        description=f"constructor options, only {', '.join(BACKBONE_OPTIONS)}",
    )
    weights: str | None = Field(
        None, description="a local state dict, timm checkpoint or .safetensors (never unpickled)"
    )
    pretrained: bool = Field(
        False, description="timm's own download (needs network; a service allows it only if told)"
    )

    @field_validator("options")
    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        # Checked with the spec, not when a worker builds the network: see trainers/backbones.
        problems = check_options(options)
        if problems:
            raise ValueError("; ".join(problems))
        return options


class BackboneConfig(BackboneSettings):
    """The network: a dmsweep or timm name, options passed through, initial weights."""

    name: str


class MixingSettings(StrictModel):
    """How a policy draws (a sweep spec's ``mixing``, for every cell or per override)."""

    lambda_mode: LambdaMode = Field(
        "batch",
        description="batch: one lambda, box or mask per batch (the paper's configurations); "
        "sample: one per sample (not comparable with the paper)",
    )
    saliency_detector: SaliencyDetector = Field(
        "fine_grained",
        description="saliencymix only: fine_grained (OpenCV's, as SaliencyMix) or "
        "spectral_residual",
    )
    puzzlemix_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="puzzlemix only: processes solving its graph cuts, in parallel across "
        "samples; 0: in the training process; default: the CPUs less one, at most 8 (the "
        "labellings are the same whatever the count)",
    )
    samix_balance: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="samix only: SAMix's eta, the weight of the classes outside the pair in "
        "its Mixer's loss (not DM's eta); unset: its config's, 0.5 up to 64 px, 1 above",
    )


class MixingConfig(MixingSettings):
    """The mixing method, its Beta(alpha, alpha) parameter and how lambda is drawn."""

    method: str = Field(description=f"one of {', '.join(METHODS)}")
    alpha: Annotated[float, BOUNDS["alpha"].constraint()] | None = Field(
        None, description="needed by every policy but resizemix"
    )

    @model_validator(mode="after")
    def _check(self) -> MixingConfig:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if takes_alpha(self.method) and self.alpha is None:
            raise ValueError(f"method {self.method!r} needs alpha (> 0)")
        return self


class LossConfig(StrictModel):
    """The loss and its hyperparameters (eta for dm_ce; xi and t for dm_bce).

    With method ``mixup_cutmix`` the batches alternate between an interpolation-based and a
    cutting-based policy, which A.3 gives different DM(BCE) settings: ``xi`` and ``t`` then apply
    to the CutMix batches and ``interpolation_xi`` / ``interpolation_t`` to the Mixup ones.
    """

    name: str = Field(description=f"one of {', '.join(LOSSES)}")
    eta: Annotated[float, BOUNDS["eta"].constraint()] | None = Field(None)
    xi: Annotated[float, BOUNDS["xi"].constraint()] | None = Field(None)
    t: Annotated[float, BOUNDS["t"].constraint()] | None = Field(None)
    interpolation_xi: Annotated[float, BOUNDS["xi"].constraint()] | None = Field(
        None, description="dm_bce with mixup_cutmix: xi of the Mixup batches"
    )
    interpolation_t: Annotated[float, BOUNDS["t"].constraint()] | None = Field(
        None, description="dm_bce with mixup_cutmix: t of the Mixup batches"
    )

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        objective(self.name, **self.hyperparameters(), **self.interpolation_settings())
        return self

    def interpolation_settings(self) -> dict[str, float]:
        """``interpolation_xi`` / ``interpolation_t`` where set (dm_bce with mixup_cutmix)."""
        values = {"interpolation_xi": self.interpolation_xi}
        values["interpolation_t"] = self.interpolation_t
        return {k: v for k, v in values.items() if v is not None}

    def hyperparameters(self) -> dict[str, float]:
        """The hyperparameters that are set."""
        values = {"eta": self.eta, "xi": self.xi, "t": self.t}
        return {k: v for k, v in values.items() if v is not None}


# TorchSSL's uratio per algorithm (config/<algorithm>/<algorithm>_cifar10_4000_0.yaml): the
# unlabelled images of a step per labelled one.
TORCHSSL_UNLABELLED_RATIO = {
    LABELLED_ONLY: 0,  # no unlabelled images
    "pseudo_label": 1,
    "mixmatch": 1,
    "remixmatch": 1,
    "uda": 7,
    "fixmatch": 7,
    "flexmatch": 7,
}


class SemiSupervisedSettings(StrictModel):
    """How a semi-supervised trial trains (Sec. 4.4; a sweep spec's ``semi_supervised``).

    A semi-supervised run counts optimisation steps, as TorchSSL does: ``steps`` in all, an
    evaluation every ``eval_every`` (one "epoch" of the metrics each trial reports is one such
    interval; the last may be shorter). The recipe's epochs are not read.
    """

    steps: int = Field(2**20, ge=1, le=MAX_STEPS, description="optimisation steps (Sec. 4.4: 2^20)")
    eval_every: int = Field(
        5000,
        ge=1,
        le=MAX_STEPS,
        description="steps between evaluations (TorchSSL's num_eval_iter); one interval is one "
        "'epoch' of the reported metrics",
    )
    unlabelled_ratio: int | None = Field(
        None,
        ge=1,
        le=MAX_UNLABELLED_RATIO,
        description="mu: unlabelled images per labelled one in a step; default: TorchSSL's for "
        "the algorithm (7 for uda, fixmatch and flexmatch, 1 for the others)",
    )

    as_side: AsSide = Field(
        DEFAULT_AS_SIDE,
        description="the asymmetric strategy's lambda: labelled_minor, lambda <= 0.5 (Sec. 3.2); "
        "labelled_major, lambda >= 0.5 (Table 9's ablation); none: no AS term, the cell's "
        "policy mixes labelled images among themselves (self_tuning, Table 9's +MCE). In a "
        "sweep spec: the grid's as_side axis",
    )

    def intervals(self) -> int:
        """Evaluations of the run: ``ceil(steps / eval_every)``."""
        return -(-self.steps // self.eval_every)

    def is_papers(self, algorithm: str) -> bool:
        """Whether these settings are the paper's for ``algorithm`` (``PAPER_SCHEDULES``)."""
        steps, every = PAPER_SCHEDULES["transfer" if algorithm in TRANSFER else "semi_supervised"]
        return (self.steps, self.eval_every, self.unlabelled_ratio) == (steps, every, None)


# The step-based tables' run lengths and evaluation intervals: Sec. 4.4's 2^20 steps with
# TorchSSL's evaluation every 5000 (num_eval_iter; Table 7), Sec. 4.3's 27k steps with
# Self-Tuning's --test_interval 3000 (src/main.py; Tables 6 and 9). The AS side is a grid axis.
PAPER_SCHEDULES = {"semi_supervised": (2**20, 5000), "transfer": (27_000, 3000)}


class TransferSettings(StrictModel):
    """Settings of the transfer algorithms (Sec. 4.3, Tables 6 and 9; a sweep spec's ``transfer``).

    The algorithms' own numbers (BSS's k and weight, Co-Tuning's trade-off, Self-Tuning's queue,
    temperature and momentum) are their authors' defaults, in ``trainers.transfer``.
    """

    labelled_mixup: Literal["none", "mce", "dm_ce"] = Field(
        "none",
        description="self_tuning with an AS term only: also mix labelled images among "
        "themselves with this loss (OpenMixup's DMixTuning; Table 9's +MCE+AS rows: mce)",
    )
    as_threshold: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="confidence a pseudo-label needs to take part in the AS term; default: 0 "
        "for self_tuning (DMixTuning mixes every one), 0.95 (FixMatch's) for the algorithms "
        "without an unlabelled stream of their own",
    )


class EvalConfig(StrictModel):
    """What is measured besides accuracy."""

    fgsm: bool = Field(False, description="FGSM error of Table 8 at the end (white-box)")
    fgsm_epsilon: float = Field(8 / 255, gt=0, le=1)
    mixed_batch: int = Field(
        256, ge=2, le=MAX_BATCH_SIZE, description="size of the fixed mixed validation batch"
    )


class TrainConfig(StrictModel):
    """One trial: data, backbone, mixing, loss, recipe (plus overrides), seed and bookkeeping."""

    data: DataConfig
    backbone: BackboneConfig
    mixing: MixingConfig
    loss: LossConfig
    algorithm: str = Field(
        "supervised",
        description=f"one of {', '.join(ALGORITHMS)}: supervised, a semi-supervised algorithm "
        "of Table 7 or a transfer algorithm of Table 6 (its labelled images: "
        "data.label_fraction)",
    )
    semi_supervised: SemiSupervisedSettings = Field(default_factory=SemiSupervisedSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    recipe: str = "cifar"
    recipe_overrides: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="default: the recipe's")
    batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, description="global; default: the recipe's"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between checkpoints")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self._check_label_count()
        if self.algorithm != "supervised":
            self._check_semi_supervised()
        if self.loss.name == "ce" and self.mixing.method != "vanilla":
            raise ValueError(
                f"loss 'ce' ignores mixed labels; use it with method 'vanilla', or use "
                f"mce / dm_ce / mbce / mbce_two / dm_bce with {self.mixing.method!r}"
            )
        recipe = get_recipe(self.recipe, self.recipe_overrides)  # raises naming the field
        if recipe.bce and self.loss.name in SOFTMAX_LOSSES:
            raise ValueError(
                f"recipe {self.recipe!r} trains with binary cross-entropy (RSB A3, Table 10); "
                f"use loss mbce, mbce_two or dm_bce, not {self.loss.name!r}"
            )
        if self.loss.interpolation_settings() and self.mixing.method != "mixup_cutmix":
            raise ValueError(
                "loss.interpolation_xi / interpolation_t apply only to method 'mixup_cutmix' "
                f"(its Mixup batches); method {self.mixing.method!r} uses loss.xi and loss.t"
            )
        if (
            self.mixing.method == "mixup_cutmix"
            and self.mixing.alpha is None
            and (recipe.mixup_alpha is None or recipe.cutmix_alpha is None)
        ):
            raise ValueError(
                f"method 'mixup_cutmix' needs alphas: recipe {self.recipe!r} sets no "
                "mixup_alpha / cutmix_alpha, so give mixing.alpha (used for both) or override them"
            )
        if recipe.pretrained_init and not (self.backbone.weights or self.backbone.pretrained):
            raise ValueError(
                f"recipe {self.recipe!r} starts from ImageNet weights (Sec. 4.1): set "
                "backbone.weights to a local file, or backbone.pretrained: true with network"
            )
        return self

    def _check_label_count(self) -> None:
        """A count of labels must not exceed the training images (known before any is read)."""
        data = self.data
        count = data.label_fraction
        if count is None or count <= 1:
            return
        if data.subset is not None:
            images, where = data.subset, "data.subset"
        elif data.name == "synthetic":
            images = (data.synthetic_images or {}).get("train", SYNTHETIC_IMAGES["train"])
            where = "synthetic train images"
        elif data.name in DATASETS:
            images, where = DATASETS[data.name].train_images, f"{data.name}'s training images"
        else:
            return
        if count > images:
            raise ValueError(
                f"data.label_fraction (the grid's labels) keeps {count:g} labels, more than the "
                f"{images:,} images to train on ({where}): give a count <= {images:,} or a "
                "fraction in (0, 1]"
            )

    def _check_semi_supervised(self) -> None:
        """Refuse what a semi-supervised algorithm would not use, naming both fields."""
        if self.algorithm not in SEMI_SUPERVISED_CELLS:
            raise ValueError(
                f"unknown algorithm {self.algorithm!r}; allowed: {', '.join(ALGORITHMS)}"
            )
        cells = SEMI_SUPERVISED_CELLS[self.algorithm]
        if self.mixing.method not in cells:
            raise ValueError(
                f"algorithm {self.algorithm!r} does not use mixing.method "
                f"{self.mixing.method!r}; allowed with it: {', '.join(cells)}"
            )
        if self.loss.name not in cells[self.mixing.method]:
            raise ValueError(
                f"algorithm {self.algorithm!r} with mixing.method {self.mixing.method!r} does "
                f"not use loss {self.loss.name!r}; allowed: "
                f"{', '.join(cells[self.mixing.method])}"
            )
        if self.uses_unlabelled() and self.data.label_fraction in (None, 1):
            raise ValueError(
                f"algorithm {self.algorithm!r} with mixing.method {self.mixing.method!r} learns "
                "from unlabelled images, and data.label_fraction (the grid's labels) keeps every "
                "label: give a count or a fraction below 1"
            )
        self._check_mixing_side()
        recipe = self.recipe_settings()
        if self.algorithm == "co_tuning" and not self.backbone.weights:
            raise ValueError(
                "algorithm 'co_tuning' keeps the pretrained source head: backbone.weights must "
                "name a local file that has it (e.g. torchvision's ImageNet ResNet-50 weights)"
            )
        if self.algorithm in TRANSFER:
            # Transfer runs evaluate the model itself (Self-Tuning keeps no EMA).
            self._check_steps(recipe)
            return
        if recipe.amp:
            raise ValueError(
                f"algorithm {self.algorithm!r} trains in float32; recipe {self.recipe!r} asks for "
                "mixed precision (set recipe_overrides amp: false)"
            )
        if recipe.ema_decay is None:
            raise ValueError(
                f"algorithm {self.algorithm!r} evaluates an EMA of the weights; recipe "
                f"{self.recipe!r} keeps none (recipe ssl: ema_decay 0.999; or set ema_decay)"
            )
        self._check_steps(recipe)

    def _check_steps(self, recipe: Recipe) -> None:
        """A step-based trial's recipe and epochs: nothing counted in epochs."""
        if recipe.warmup_epochs:
            raise ValueError(
                f"algorithm {self.algorithm!r} counts steps, not epochs: recipe {self.recipe!r}'s "
                f"warmup_epochs {recipe.warmup_epochs:g} is in epochs (set warmup_epochs 0; a "
                "step schedule's lr_milestones are fractions of semi_supervised.steps)"
            )
        if self.epochs is not None and self.epochs != self.semi_supervised.intervals():
            raise ValueError(
                f"algorithm {self.algorithm!r} counts steps: set semi_supervised.steps and "
                f"eval_every, not epochs ({self.epochs})"
            )

    def _check_mixing_side(self) -> None:
        """``semi_supervised.as_side`` and the ``transfer`` settings, where they mean something."""
        side = self.semi_supervised.as_side
        mixes = self.mixing.method != "vanilla"
        if side != DEFAULT_AS_SIDE and not (mixes and self.algorithm in AS_ALGORITHMS):
            raise ValueError(
                f"semi_supervised.as_side (the grid's as_side) {side!r} needs a mixing policy "
                f"and an algorithm with an AS term ({', '.join(sorted(AS_ALGORITHMS))}); got "
                f"algorithm {self.algorithm!r} with mixing.method {self.mixing.method!r}"
            )
        if side == "none" and self.algorithm not in LABELLED_MIXING:
            raise ValueError(
                f"semi_supervised.as_side 'none' mixes labelled images among themselves, which "
                f"only {', '.join(sorted(LABELLED_MIXING))} does; algorithm "
                f"{self.algorithm!r} takes labelled_minor or labelled_major"
            )
        transfer = self.transfer
        as_term = mixes and side != "none" and self.algorithm in TRANSFER
        if transfer.labelled_mixup != "none" and not (as_term and self.algorithm == "self_tuning"):
            raise ValueError(
                f"transfer.labelled_mixup {transfer.labelled_mixup!r} adds labelled mixing beside "
                "an AS term of self_tuning (a policy, as_side labelled_minor or labelled_major); "
                f"got algorithm {self.algorithm!r}, mixing.method {self.mixing.method!r}, "
                f"as_side {side!r}"
            )
        if transfer.as_threshold is not None and not as_term:
            raise ValueError(
                "transfer.as_threshold filters the pseudo-labels of a transfer algorithm's AS "
                f"term; algorithm {self.algorithm!r} with mixing.method {self.mixing.method!r} "
                f"and as_side {side!r} has none"
            )

    def uses_unlabelled(self) -> bool:
        """Whether the trial's steps draw unlabelled images (and so need labels held out)."""
        if self.algorithm in SEMI_SUPERVISED or self.algorithm == "self_tuning":
            return True
        return (
            self.algorithm in TRANSFER
            and self.mixing.method != "vanilla"
            and self.semi_supervised.as_side != "none"
        )

    def unlabelled_ratio(self) -> int:
        """The unlabelled ratio mu: the trial's own, else TorchSSL's for the algorithm.

        A transfer algorithm takes 1 where it draws unlabelled images (Self-Tuning's run.sh:
        24 labelled and 24 unlabelled images a step), else 0.
        """
        if self.algorithm in TRANSFER:
            if not self.uses_unlabelled():
                return 0
            return self.semi_supervised.unlabelled_ratio or 1
        ratio = self.semi_supervised.unlabelled_ratio
        if ratio is None or self.algorithm == LABELLED_ONLY:
            return TORCHSSL_UNLABELLED_RATIO[self.algorithm]
        return ratio

    def recipe_settings(self) -> Recipe:
        """The recipe with the trial's overrides applied."""
        return get_recipe(self.recipe, self.recipe_overrides)

    def epochs_to_train(self) -> int:
        """The trial's epochs: its own, else its recipe's; a semi-supervised trial's intervals."""
        if self.algorithm != "supervised":
            return self.semi_supervised.intervals()
        return self.epochs or self.recipe_settings().epochs

    def global_batch_size(self) -> int:
        """The trial's batch over all its workers: its own, else its recipe's."""
        return self.batch_size or self.recipe_settings().batch_size


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML mapping into ``model``; errors name the file and each failing field path."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"{path}: {describe_errors(error)}") from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a trial from YAML."""
    return load_yaml_model(path, TrainConfig)
