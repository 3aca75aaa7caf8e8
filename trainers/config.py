"""``TrainConfig``: everything one trial (one grid cell with one seed) trains with.

``dmsweep train TRIAL.yaml`` reads exactly this model, and a sweep spec expands into a list of
them. Every error names the field and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from trainers.objectives import objective
from trainers.recipes import get_recipe
from trainers.validation import StrictModel, describe_errors
from trainers.vocabulary import BOUNDS, LOSSES, METHODS, SOFTMAX_LOSSES, takes_alpha

M = TypeVar("M", bound=BaseModel)


def _fraction_or_count(amount: float) -> float:
    if amount > 1 and not float(amount).is_integer():
        raise ValueError(
            f"must be a fraction in (0, 1] or a whole count of labels > 1; got {amount!r}"
        )
    return amount


class DataSettings(StrictModel):
    """Where a data set lives and which part of it is used (a sweep spec's ``data.<name>``)."""

    source: str | None = Field(None, description="cifar, imagefolder, parquet or synthetic")
    root: str | None = Field(None, description="default: $DMSWEEP_DATA_ROOT/<name>")
    image_size: int | None = Field(None, ge=8, description="default: the data set's own")
    subset: int | None = Field(None, ge=1, description="keep N training images, class-balanced")
    test_subset: int | None = Field(
        None, ge=1, description="evaluate on N test images, class-balanced (quick runs)"
    )
    label_fraction: Annotated[float | int, AfterValidator(_fraction_or_count)] | None = Field(
        None,
        gt=0,
        description="keep labels for a fraction in (0, 1] or a whole count (> 1) of images",
    )
    num_classes: int | None = Field(None, ge=2, description="synthetic data only")
    synthetic_images: dict[str, int] | None = Field(
        None, description="synthetic data only: images per split, e.g. {train: 2000, test: 1000}"
    )


class DataConfig(DataSettings):
    """Which images: a data set name, where it lives and which part of it is used."""

    name: str = Field(description="cifar10, cifar100, tiny_imagenet, cub200, ... or synthetic")


class BackboneSettings(StrictModel):
    """Options and initial weights of a backbone (a sweep spec's ``backbones.<name>``)."""

    options: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="a local state dict or timm checkpoint")
    pretrained: bool = Field(False, description="timm's own download (needs network)")


class BackboneConfig(BackboneSettings):
    """The network: a dmsweep or timm name, options passed through, initial weights."""

    name: str


class MixingConfig(StrictModel):
    """The mixing method and its Beta(alpha, alpha) parameter."""

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
    """The loss and its hyperparameters (eta for dm_ce; xi and t for dm_bce)."""

    name: str = Field(description=f"one of {', '.join(LOSSES)}")
    eta: Annotated[float, BOUNDS["eta"].constraint()] | None = Field(None)
    xi: Annotated[float, BOUNDS["xi"].constraint()] | None = Field(None)
    t: Annotated[float, BOUNDS["t"].constraint()] | None = Field(None)

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        objective(self.name, **self.hyperparameters())  # raises naming what is wrong
        return self

    def hyperparameters(self) -> dict[str, float]:
        """The hyperparameters that are set."""
        values = {"eta": self.eta, "xi": self.xi, "t": self.t}
        return {k: v for k, v in values.items() if v is not None}


class EvalConfig(StrictModel):
    """What is measured besides accuracy."""

    fgsm: bool = Field(False, description="FGSM error of Table 8 at the end (white-box)")
    fgsm_epsilon: float = Field(8 / 255, gt=0, le=1)
    mixed_batch: int = Field(256, ge=2, description="size of the fixed mixed validation batch")


class TrainConfig(StrictModel):
    """One trial: data, backbone, mixing, loss, recipe (plus overrides), seed and bookkeeping."""

    data: DataConfig
    backbone: BackboneConfig
    mixing: MixingConfig
    loss: LossConfig
    recipe: str = "cifar"
    recipe_overrides: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=1, description="default: the recipe's")
    batch_size: int | None = Field(None, ge=1, description="global; default: the recipe's")
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
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
