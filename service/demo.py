"""The demo grid: every cell of a small grid trained in this process, on synthetic data.

The grid is a YAML file (``search_spaces/demo.yaml``) read into :class:`DemoGrid`; each cell is
one (policy, loss) pair trained by ``trainers.smoke.train_cell``, and the result is the
paper-style comparison of MCE and DM(CE) per policy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trainers.data.synthetic import synthetic
from trainers.mixing import POLICIES
from trainers.objectives import LOSSES
from trainers.smoke import CellResult, CellSettings, train_cell


class DataSettings(BaseModel):
    """Size of the synthetic data set."""

    model_config = ConfigDict(extra="forbid")
    num_classes: int = Field(10, ge=2)
    image_size: int = Field(32, ge=8)
    train_images: int = Field(2000, ge=1)
    val_images: int = Field(1000, ge=1)


class DemoGrid(BaseModel):
    """A grid of (policy, loss) cells with shared training settings."""

    model_config = ConfigDict(extra="forbid")
    name: str
    policies: list[str] = Field(min_length=1)
    losses: dict[str, dict[str, float]] = Field(min_length=1)
    alpha: float = Field(gt=0)
    backbone: str = "smallnet"
    data: DataSettings = DataSettings()
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    seed: int = Field(0, ge=0)

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, policies: list[str]) -> list[str]:
        unknown = [p for p in policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policy {unknown[0]!r}; allowed: {', '.join(POLICIES)}")
        return policies

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, losses: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        unknown = [name for name in losses if name not in LOSSES]
        if unknown:
            raise ValueError(f"unknown loss {unknown[0]!r}; allowed: {', '.join(LOSSES)}")
        return losses

    def cells(self) -> list[CellSettings]:
        """One cell per (policy, loss), policies outermost."""
        return [
            CellSettings(
                policy=policy,
                loss=loss,
                alpha=self.alpha,
                loss_options=options,
                backbone=self.backbone,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                seed=self.seed,
            )
            for policy in self.policies
            for loss, options in self.losses.items()
        ]


def load_grid(path: Path) -> DemoGrid:
    """Read and validate a grid file; errors name the file and the failing fields."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return DemoGrid.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in error.errors()
        )
        raise ValueError(f"{path}: {problems}") from None


def run_grid(
    grid: DemoGrid,
    on_cell_start: Callable[[CellSettings], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[tuple[CellSettings, CellResult]]:
    """Train every cell of the grid on one synthetic data set (train and validation split)."""
    data = grid.data
    shape = {"num_classes": data.num_classes, "image_size": data.image_size, "seed": grid.seed}
    train = synthetic(data.train_images, split="train", **shape)
    val = synthetic(data.val_images, split="val", **shape)
    results = []
    for cell in grid.cells():
        if on_cell_start is not None:
            on_cell_start(cell)
        results.append((cell, train_cell(train, val, cell, on_epoch=on_epoch)))
    return results
