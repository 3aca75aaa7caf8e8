"""The calibration table: measured images/s of the training step, per device and setting.

``dmsweep calibrate`` measures rows on the machine it runs on and adds them to a YAML file
(default ``~/.dmsweep/calibration.yaml``, or ``$DMSWEEP_CALIBRATION_TABLE``); ``dmsweep plan``
and the sweep service read them. A row is keyed by backbone, image size, batch size per worker,
device, trials per device and mixed precision; measuring the same key again replaces the row.
The file is plain YAML, one mapping per row, so figures measured elsewhere can be pasted in::

    rows:
    - backbone: resnet18_cifar
      image_size: 32
      batch_size: 100
      device: NVIDIA H100 80GB HBM3
      kind: cuda
      trials_per_device: 1
      amp: false
      images_per_s: 21000.0
      measured_at: '2026-12-01T10:00:00+00:00'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from trainers.validation import StrictModel, describe_errors

TABLE_VARIABLE = "DMSWEEP_CALIBRATION_TABLE"
USER_TABLE = Path("~/.dmsweep/calibration.yaml")
# Shipped with dmsweep: figures measured on the paper's kind of GPUs (none yet).
SHIPPED_TABLE = Path(__file__).resolve().with_name("default_calibration.yaml")

RowKey = tuple[str, int, int, str, int, bool]


class CalibrationRow(StrictModel):
    """Images/s of one trial's training step, measured on one device."""

    backbone: str = Field(min_length=1, description="a dmsweep or timm backbone name")
    image_size: int = Field(ge=1, description="training image size, px")
    batch_size: int = Field(ge=1, description="images per step of one worker")
    device: str = Field(min_length=1, description="the GPU's name, or the CPU's and its threads")
    kind: Literal["cpu", "cuda"] = Field(description="cpu or cuda")
    trials_per_device: int = Field(
        1, ge=1, description="trials sharing the device while measured (1 / gpus_per_worker)"
    )
    amp: bool = Field(False, description="mixed precision (the recipe's, on a GPU)")
    images_per_s: float = Field(gt=0, description="images/s of one of those trials")
    measured_at: str | None = Field(None, description="when, UTC (ISO 8601)")
    recipe: str | None = Field(None, description="the recipe measured with")
    steps: int | None = Field(None, ge=1, description="steps timed")

    def key(self) -> RowKey:
        """What a row is measured for; a table holds one row per key."""
        return (
            self.backbone,
            self.image_size,
            self.batch_size,
            self.device,
            self.trials_per_device,
            self.amp,
        )


class CalibrationTable(StrictModel):
    """Rows in the order they are preferred: the first of equally good matches wins."""

    rows: list[CalibrationRow] = Field(default_factory=list)

    def with_row(self, row: CalibrationRow) -> CalibrationTable:
        """The table with ``row`` in place of the row of the same key (or appended)."""
        kept = [r for r in self.rows if r.key() != row.key()]
        return CalibrationTable(rows=[*kept, row])

    def devices(self) -> dict[str, str]:
        """Device name to kind (cpu / cuda), in table order."""
        return {row.device: row.kind for row in self.rows}

    def on(self, device: str) -> list[CalibrationRow]:
        """The rows measured on ``device``."""
        return [row for row in self.rows if row.device == device]


def merged(*tables: CalibrationTable) -> CalibrationTable:
    """One table of the rows of all ``tables``, earlier tables' rows preferred."""
    return CalibrationTable(rows=[row for table in tables for row in table.rows])


def read_table(path: Path) -> CalibrationTable:
    """The table in ``path``; an empty table for an empty file; a ValueError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no such calibration table (dmsweep calibrate writes one)"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not a readable YAML file: {error}") from None
    if raw is None:
        return CalibrationTable()
    try:
        return CalibrationTable.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"{path}: {describe_errors(error)}") from None


def write_table(table: CalibrationTable, path: Path) -> None:
    """Write ``table`` to ``path`` as YAML (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [row.model_dump(exclude_none=True) for row in table.rows]
    header = "# images/s of one trial's training step, measured by `dmsweep calibrate`\n"
    path.write_text(header + yaml.safe_dump({"rows": rows}, sort_keys=False))


def user_table_path(env: Mapping[str, str] | None = None) -> Path:
    """Where ``dmsweep calibrate`` writes by default.

    ``$DMSWEEP_CALIBRATION_TABLE``, else ``~/.dmsweep/calibration.yaml``.
    """
    env = os.environ if env is None else env
    return Path(env.get(TABLE_VARIABLE) or USER_TABLE).expanduser()


def planning_table(
    path: Path | None = None, *, user: bool = True
) -> tuple[CalibrationTable, list[str]]:
    """The rows a plan reads, and the files they come from.

    ``path`` when given (it must exist); else, with ``user``, the user's table
    (``user_table_path``) when it exists. The shipped table's rows follow, as fallbacks.
    """
    chosen = path if path is not None else user_table_path()
    tables: list[CalibrationTable] = []
    sources: list[str] = []
    if path is not None or (user and chosen.is_file()):
        tables.append(read_table(chosen))
        sources.append(str(chosen))
    tables.append(read_table(SHIPPED_TABLE))
    sources.append(str(SHIPPED_TABLE))
    return merged(*tables), sources
