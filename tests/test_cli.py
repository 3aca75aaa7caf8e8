"""The ``dmsweep`` commands on real grid files, run in this process through Click's runner.

One test runs the installed command as a separate process (another checks what importing it
loads, in a fresh Python); the others call the same Typer app in-process, which tests the same
code without paying the command's start (torch and timm) each time. The service and stack tests
start ``dmsweep serve`` as a process too.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from service.cli import app

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


@dataclasses.dataclass(frozen=True)
class Ran:
    """What a command left: its exit status and its two streams."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(autouse=True)
def at_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in the commands below are relative to the repository, as in the README."""
    monkeypatch.chdir(REPO)


def dmsweep(*args: str, env: dict | None = None) -> Ran:
    """Run ``dmsweep ARGS`` in this process, 160 columns wide, as a user types it."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160", **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def test_train_runs_one_trial_and_keeps_what_it_reports(tmp_path):
    trial = yaml.safe_load((REPO / "search_spaces/trials/synthetic_smoke.yaml").read_text())
    trial["data"]["synthetic_images"] = {"train": 200, "test": 100}
    trial["data"]["image_size"] = 16
    trial["epochs"] = 2
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(trial))
    out = tmp_path / "out"
    result = dmsweep("train", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "final metrics" in result.stdout and "top1_median_last10" in result.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [yaml.safe_load(line)["epoch"] for line in lines] == [1, 2]
    assert (out / "checkpoint_0002" / "state.pt").is_file()
    # A longer run resumed from the last checkpoint continues where it stopped.
    trial["epochs"] = 3
    path.write_text(yaml.safe_dump(trial))
    resumed = dmsweep(
        "train", str(path), "--out", str(out), "--resume", str(out / "checkpoint_0002")
    )
    assert resumed.returncode == 0, resumed.stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [yaml.safe_load(line)["epoch"] for line in lines] == [1, 2, 3]


def test_the_shipped_trials_are_valid():
    from trainers.config import load_train_config

    for path in sorted((REPO / "search_spaces/trials").glob("*.yaml")):
        load_train_config(path)


def test_train_names_what_is_wrong_with_a_trial(tmp_path):
    from trainers.config import load_train_config

    trial = yaml.safe_load((REPO / "search_spaces/trials/synthetic_smoke.yaml").read_text())
    cases = [
        ({"loss": {"name": "dm_ce"}}, "loss: Value error, loss 'dm_ce' takes eta: missing eta"),
        ({"mixing": {"method": "autoMix", "alpha": 1}}, "unknown method 'autoMix'"),
        (
            {"mixing": {"method": "samix", "alpha": 2, "samix_balance": 2}},
            "mixing.samix_balance: Input should be less than or equal to 1",
        ),
        ({"loss": {"name": "dm_bce", "xi": 0, "t": 1}}, "loss.xi: Input should be greater than 0"),
        ({"recipe": "imagenet"}, "unknown recipe 'imagenet'"),
        ({"recipe_overrides": {"lrr": 0.1}}, "lrr"),
        ({"loss": {"name": "ce"}}, "loss 'ce' ignores mixed labels"),
        ({"recipe": "rsb_a3"}, "use loss mbce, mbce_two or dm_bce, not 'dm_ce'"),
        ({"recipe": "finegrained"}, "set backbone.weights to a local file"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"mixing": {"method": "mixup_cutmix"}}, "method 'mixup_cutmix' needs alphas"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ]
    path = tmp_path / "bad.yaml"
    for change, message in cases:
        path.write_text(yaml.safe_dump({**trial, **change}))
        with pytest.raises(ValueError) as error:
            load_train_config(path)
        assert str(path) in str(error.value)
        assert message in str(error.value)
    # Through the command line: exit status 2 and the same message, nothing trained.
    result = dmsweep("train", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "colour: Extra inputs are not permitted" in " ".join(result.stdout.split())
    assert not (tmp_path / "out").exists()


def test_data_prepare_converts_a_layout_to_parquet(tmp_path):
    from PIL import Image

    from trainers.data import ParquetShards

    src = tmp_path / "folder"
    for split, count in (("train", 3), ("test", 2)):
        for name, shade in (("cat", 40), ("dog", 200)):
            (src / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (12, 12), (shade, i * 10, 0)).save(src / split / name / f"{i}.png")
    out = tmp_path / "shards"
    result = dmsweep(
        "data",
        "prepare",
        "imagefolder",
        str(src),
        "--out",
        str(out),
        "--format",
        "parquet",
        "--image-size",
        "12",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    train = ParquetShards(out, "train")
    assert train.classes == ["cat", "dog"] and len(train) == 6
    assert train.read(torch.arange(6)).shape == (6, 3, 12, 12)
    again = dmsweep(
        "data", "prepare", "imagefolder", str(src), "--out", str(out), "--format", "parquet"
    )
    assert again.returncode == 2 and "overwrite" in again.stdout
    unknown = dmsweep("data", "prepare", "imagenet21k", str(src), "--out", str(out))
    assert unknown.returncode == 2 and "cifar10" in unknown.stdout


def test_validate_prints_the_grid_product_of_table1(tmp_path):
    import json

    result = dmsweep("validate", "search_spaces/cifar100_table1.yaml", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    grid = yaml.safe_load((REPO / "search_spaces/cifar100_table1.yaml").read_text())["grid"]
    cells = len(grid["dataset"]) * len(grid["backbone"]) * len(grid["method"]) * len(grid["loss"])
    assert (info["cells"], info["trials"]) == (cells, cells * len(grid["seeds"]))
    table = dmsweep("validate", "search_spaces/cifar100_table1.yaml")
    assert f"{cells} cells, {cells * len(grid['seeds'])} trials" in table.stdout
    assert "cifar100/resnet18_cifar/mixup/dm_ce" in table.stdout
    # Data roots are checked only when asked: the paper's specs validate without their data.
    missing = dmsweep(
        "validate",
        "search_spaces/cifar100_table1.yaml",
        "--check-data",
        "--json",
        env={"DMSWEEP_DATA_ROOT": str(tmp_path)},
    )
    assert missing.returncode == 2
    assert str(tmp_path / "cifar100") in json.loads(missing.stdout)["data_problems"][0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ngrid: {dataset: [cifar100], backbone: [resnet18_cifar], "
        "method: [mixup], loss: [dm_ce], seeds: [0]}\nhyperparameters: {eta: -1}\n"
    )
    invalid = dmsweep("validate", str(bad))
    assert invalid.returncode == 2 and "hyperparameters.eta" in invalid.stdout


def test_the_installed_command_prints_the_specs_json_schema():
    import json

    result = subprocess.run(
        [str(BIN / "dmsweep"), "schema"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "grid" in json.loads(result.stdout)["properties"]


def test_run_refuses_a_bad_spec_up_front_and_creates_nothing(tmp_path):
    storage = tmp_path / "runs"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ngrid: {dataset: [synthetic], backbone: [smallnet], method: [mixup], "
        "loss: [dm_ce], seeds: [0]}\nhyperparameters: {xi: 0}\n"
    )
    invalid = dmsweep("run", str(bad), "--storage-path", str(storage))
    assert invalid.returncode == 2 and "xi" in invalid.stdout and "(0, 1]" in invalid.stdout
    # A data root that does not exist: refused before Ray starts or a sweep folder is made.
    no_data = tmp_path / "nodata.yaml"
    no_data.write_text(
        "name: y\ngrid: {dataset: [cifar10], backbone: [resnet18_cifar], method: [mixup], "
        f"loss: [mce], seeds: [0]}}\ndata: {{cifar10: {{root: {tmp_path / 'nowhere'}}}}}\n"
    )
    missing = dmsweep("run", str(no_data), "--storage-path", str(storage))
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert f"data folder {tmp_path / 'nowhere'} does not exist" in missing.stdout
    # tune needs a search section.
    grid_only = dmsweep("tune", "search_spaces/smoke.yaml", "--storage-path", str(storage))
    assert grid_only.returncode == 2 and "no search section" in grid_only.stdout
    assert not storage.exists() or not any(storage.iterdir())


def test_resume_logs_and_report_name_an_unknown_sweep(tmp_path):
    for command in ("resume", "logs", "report"):
        result = dmsweep(command, "nope-20260101T000000Z", "--storage-path", str(tmp_path))
        assert result.returncode == 2, command
        assert "no sweep 'nope-20260101T000000Z'" in result.stdout


def test_the_field_reference_is_current():
    result = dmsweep("schema", "--markdown")
    assert result.returncode == 0
    assert result.stdout == (REPO / "search_spaces/REFERENCE.md").read_text(), (
        "regenerate it: dmsweep schema --markdown > search_spaces/REFERENCE.md"
    )
    from service.spec.model import SweepSpec

    for name in SweepSpec.model_fields:
        assert f"| `{name}` |" in result.stdout


def test_the_command_starts_without_torch_timm_or_mlflow():
    """`dmsweep --help` and the client commands load no model code: they start in a second.

    Each command imports the spec model, the training code or MLflow when it runs.
    """
    probe = (
        "import sys, service.cli; "
        "print(sorted(m for m in ('torch', 'timm', 'mlflow', 'ray') if m in sys.modules))"
    )
    result = subprocess.run(
        [str(BIN / "python"), "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
