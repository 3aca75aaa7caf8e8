"""The ``dmsweep`` command as a user runs it: a real process, a real grid file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def dmsweep(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(REPO)},
    )


def tiny_grid(tmp_path: Path, **changes) -> Path:
    grid = yaml.safe_load((REPO / "search_spaces/demo.yaml").read_text())
    grid.update(
        policies=["mixup", "fmix"],
        data={"num_classes": 4, "image_size": 16, "train_images": 200, "val_images": 100},
        epochs=1,
    )
    grid.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_demo_trains_the_grid_and_prints_mce_against_dm(tmp_path):
    result = dmsweep("demo", str(tiny_grid(tmp_path)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "4 cells (2 policies x 2 losses)" in out
    rows = [line for line in out.splitlines() if line.startswith(("│ mixup", "│ fmix"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        mce, dm, delta = float(cells[1]), float(cells[2]), float(cells[3])
        assert 0 <= mce <= 100 and 0 <= dm <= 100
        assert abs((dm - mce) - delta) < 0.11


def test_the_shipped_demo_grid_is_valid():
    from service.demo import load_grid

    grid = load_grid(REPO / "search_spaces/demo.yaml")
    assert len(grid.cells()) == 12


def test_bad_grid_files_get_a_clear_error(tmp_path):
    cases = {
        "policies: [mixup, puzzle]": "unknown policy 'puzzle'; allowed: mixup, cutmix",
        "alpha: -1": "alpha: Input should be greater than 0",
        "colour: blue": "colour: Extra inputs are not permitted",
    }
    for change, message in cases.items():
        key, value = change.split(": ", 1)
        path = tiny_grid(tmp_path, **{key: yaml.safe_load(value)})
        result = dmsweep("demo", str(path))
        assert result.returncode == 2
        assert message in result.stdout
    missing = dmsweep("demo", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stdout
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    listed = dmsweep("demo", str(tmp_path / "list.yaml"))
    assert listed.returncode == 2 and "expected a mapping of settings, got list" in listed.stdout
