"""The demo grid: every cell of a small grid trained in this process, on synthetic data.

The grid is a YAML file (``search_spaces/demo/grid.yaml``) read into :class:`DemoGrid`; each
cell is one (policy, loss) pair, a ``TrainConfig`` trained by the one training loop
(``trainers.loop.run``), and the result is the paper-style comparison of MCE and DM(CE) per
policy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainers.config import TrainConfig, load_yaml_model
from trainers.loop import run
from trainers.mixing import POLICIES
from trainers.objectives import LOSSES


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

    def cells(self) -> list[TrainConfig]:
        """One trial per (policy, loss), policies outermost, on the `smoke` recipe."""
        data = {
            "name": "synthetic",
            "num_classes": self.data.num_classes,
            "image_size": self.data.image_size,
            "synthetic_images": {"train": self.data.train_images, "test": self.data.val_images},
        }
        return [
            TrainConfig.model_validate(
                {
                    "data": data,
                    "backbone": {"name": self.backbone},
                    "mixing": {"method": policy, "alpha": self.alpha},
                    "loss": {"name": loss, **options},
                    "recipe": "smoke",
                    "recipe_overrides": {"lr": self.lr, "batch_size": self.batch_size},
                    "epochs": self.epochs,
                    "seed": self.seed,
                    "checkpoint_every": self.epochs,
                }
            )
            for policy in self.policies
            for loss, options in self.losses.items()
        ]


def load_grid(path: Path) -> DemoGrid:
    """Read and validate a grid file; errors name the file and the failing fields."""
    return load_yaml_model(path, DemoGrid)


def run_grid(
    grid: DemoGrid,
    on_cell_start: Callable[[TrainConfig], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[tuple[TrainConfig, dict[str, float]]]:
    """Train every cell of the grid; return each cell's final metrics (seconds summed)."""
    results = []
    for cell in grid.cells():
        if on_cell_start is not None:
            on_cell_start(cell)
        seconds = 0.0

        def report(metrics: dict[str, float], checkpoint: str | None) -> None:
            nonlocal seconds
            seconds += metrics["epoch_time_s"]
            if on_epoch is not None:
                on_epoch(metrics)

        final = run(cell, report)
        results.append((cell, {**final, "train_seconds": seconds}))
    return results
