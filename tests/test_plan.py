"""``dmsweep plan`` and ``dmsweep calibrate``: the cost of a grid before it runs.

The plans are made from hand-made calibration tables whose figures make the hours easy to work
out by hand: 3,600 images per epoch at 1 image/s is one hour per epoch. Every expected number
below is that arithmetic, written out, not the code's output read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from service.cli import app
from service.plan.calibration import CalibrationRow, CalibrationTable, read_table, write_table
from service.plan.estimate import AshaRule, packing
from service.plan.planner import Plan, plan_spec
from service.plan.summary import summary_lines
from service.server.costs import submitted_plan
from service.server.settings import ServiceSettings
from service.spec.model import SweepSpec
from tests.support.specs import tiny_spec
from trainers.backbones import build_backbone
from trainers.data.datasets import DATASETS

GPU = "Test GPU 80GB"


def row(backbone: str = "smallnet", images_per_s: float = 1.0, **changes) -> CalibrationRow:
    """A calibration row of ``GPU``: 32 px, batch 64 (the smoke recipe's), one trial per GPU."""
    values = {
        "backbone": backbone,
        "image_size": 32,
        "batch_size": 64,
        "device": GPU,
        "kind": "cuda",
        "trials_per_device": 1,
        "amp": False,
        "images_per_s": images_per_s,
    }
    return CalibrationRow.model_validate({**values, **changes})


def table(*rows: CalibrationRow) -> CalibrationTable:
    return CalibrationTable(rows=list(rows))


def spec(**changes) -> SweepSpec:
    """Synthetic data of 3,600 train images, smallnet, Mixup, recipe smoke (batch 64)."""
    values = tiny_spec(
        name="plan-test",
        epochs=2,
        data={"synthetic": {"synthetic_images": {"train": 3600, "test": 100}}},
        resources={"workers_per_trial": 1, "gpus_per_worker": 1},
    )
    return SweepSpec.model_validate({**values, **changes})


# --- the arithmetic ---------------------------------------------------------------------------


def test_device_hours_wall_time_and_cost_of_a_small_grid():
    # 2 cells (mce, dm_ce) x 3 seeds; 2 epochs of 3,600 images at 1 image/s: 2 h per trial.
    grid = {**spec().grid.model_dump(), "loss": ["mce", "dm_ce"], "seeds": [0, 1, 2]}
    made = plan_spec(spec(grid=grid), table(row()), devices=4, price=2.5)
    assert made.device == GPU and made.complete and made.warnings == []
    assert [c.cell for c in made.cells] == [
        "synthetic/smallnet/mixup/mce",
        "synthetic/smallnet/mixup/dm_ce",
    ]
    for cell in made.cells:
        assert (cell.trials, cell.epochs, cell.train_images, cell.images_per_epoch) == (
            3,
            2,
            3600,
            3600,
        )
        assert cell.figure == "measured" and not cell.extrapolated and cell.notes == []
        assert cell.trial_hours == pytest.approx(2.0)
        assert cell.device_hours == pytest.approx(3 * 2.0)
        assert cell.cost == pytest.approx(6.0 * 2.5)
    totals = made.totals
    assert totals.trials == 6
    assert totals.device_hours == pytest.approx(12.0)
    assert totals.expected_device_hours == pytest.approx(12.0)  # no early stopping
    assert totals.cost == pytest.approx(30.0)
    # 6 trials of 2 h on 4 GPUs: 12 / 4 = 3 h at best (the last two trials run alone).
    assert totals.usable_devices == 4
    assert totals.wall_hours == pytest.approx(3.0)


def test_wall_time_is_never_less_than_the_longest_trial_nor_uses_idle_devices():
    two_trials = {**spec().grid.model_dump(), "seeds": [0, 1]}
    made = plan_spec(spec(grid=two_trials), table(row()), devices=8)
    # 2 trials of 2 h: 4 device-hours, but 8 GPUs cannot make a 2 h trial shorter.
    assert made.totals.usable_devices == 2
    assert made.totals.wall_hours == pytest.approx(2.0)
    limited = spec(
        grid=two_trials,
        resources={"workers_per_trial": 1, "gpus_per_worker": 1, "max_concurrent_trials": 1},
    )
    assert plan_spec(limited, table(row()), devices=8).totals.wall_hours == pytest.approx(4.0)


def test_a_dynamic_policy_costs_the_passes_of_its_step():
    # A calibrated step is one forward (1) and one backward (2) of the backbone. PuzzleMix adds
    # a saliency pass, a forward and an input-gradient backward (1 + 1): 5 / 3 of a step.
    # AutoMix and SAMix add the encoder's forward of the clean batch (1), its forward and input
    # backward of the Mix Block's batch (1 + 1) and the backbone's clean batch (1 + 2): 9 / 3.
    grid = {**spec().grid.model_dump(), "method": ["mixup", "puzzlemix", "automix", "samix"]}
    made = plan_spec(spec(grid=grid), table(row()))
    hours = {cell.cell.split("/")[2]: cell.trial_hours for cell in made.cells}
    assert hours["mixup"] == pytest.approx(2.0)  # 2 epochs of 3,600 images at 1 image/s
    assert hours["puzzlemix"] == pytest.approx(2.0 * 5 / 3)
    assert hours["automix"] == hours["samix"] == pytest.approx(2.0 * 3)
    notes = {cell.cell.split("/")[2]: cell.notes for cell in made.cells}
    assert notes["mixup"] == []
    figures = {cell.cell.split("/")[2]: cell.figure for cell in made.cells}
    assert figures == {
        "mixup": "measured",
        "puzzlemix": "assumed",
        "automix": "assumed",
        "samix": "assumed",
    }
    assert any("saliency pass" in note for note in notes["puzzlemix"])
    assert any("momentum encoder" in note for note in notes["samix"])


def test_the_batch_and_epochs_are_the_trials_own():
    # Recipe cifar (batch 100, 800 epochs) with the spec's epochs and an override of one cell.
    grid = {**spec().grid.model_dump(), "loss": ["mce", "dm_ce"]}
    overrides = [{"match": {"loss": "dm_ce"}, "set": {"epochs": 5}}]
    made = plan_spec(
        spec(grid=grid, recipe="cifar", epochs=None, overrides=overrides),
        table(row(batch_size=100)),
    )
    assert [(c.epochs, c.batch_size) for c in made.cells] == [(800, 100), (5, 100)]
    assert [c.trial_hours for c in made.cells] == pytest.approx([800.0, 5.0])


def test_published_train_split_sizes_and_the_images_a_worker_sees():
    assert DATASETS["cifar100"].train_images == 50_000
    assert DATASETS["imagenet"].train_images == 1_281_167
    grid = {**spec().grid.model_dump(), "dataset": ["cifar100"]}
    two_workers = {"workers_per_trial": 2, "gpus_per_worker": 1}
    made = plan_spec(spec(grid=grid, data={}, resources=two_workers), table(row(batch_size=32)))
    (cell,) = made.cells
    # Each of 2 workers: half of the 50,000 images, half of the batch of 64.
    assert (cell.train_images, cell.images_per_epoch, cell.batch_size) == (50_000, 25_000, 32)
    # 2 epochs x 25,000 images at 1 image/s, holding 2 GPUs.
    assert cell.trial_hours == pytest.approx(2 * 25_000 / 3600)
    assert cell.device_hours == pytest.approx(2 * 2 * 25_000 / 3600)
    assert any("all-reduce" in line for line in made.assumptions)


def test_asha_gives_the_bound_and_the_expected_cost():
    # 4 settings per cell; ASHA with grace period 1, reduction factor 4, max_t 16: rungs at
    # epochs 1, 4 (16 ends the trial). Expected epochs per trial: 1 + 3/4 + 12/16 = 2.5.
    search = {
        "parameters": {"alpha": [0.2, 0.5, 1.0, 2.0]},
        "sampler": "grid",
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 4},
    }
    made = plan_spec(spec(epochs=16, search=search), table(row()), devices=2, price=1.0)
    (cell,) = made.cells
    assert cell.trials == 4 and cell.epochs == 16
    assert cell.expected_epochs == pytest.approx(2.5)
    assert cell.device_hours == pytest.approx(4 * 16.0)  # every trial to max_t
    assert cell.expected_device_hours == pytest.approx(4 * 2.5)
    assert made.asha is not None and made.asha.milestones == [1, 4, 16]
    totals = made.totals
    assert (totals.cost, totals.expected_cost) == pytest.approx((64.0, 10.0))
    # the longest trial still runs 16 h: the expectation cannot be faster than that
    assert totals.wall_hours == pytest.approx(32.0)
    assert totals.expected_wall_hours == pytest.approx(16.0)
    assumed = " ".join(made.assumptions)
    assert "1/4 of the trials goes on past each rung" in assumed and "bound" in assumed
    lines = summary_lines(made.model_dump(mode="json"))
    assert "64 h on Test GPU 80GB without stopping, 10 h expected (ASHA)" in lines[0]


def test_asha_expectation_by_hand_for_other_rungs():
    # grace 2, factor 3, max_t 20: rungs 2, 6, 18; 2 + 4/3 + 12/9 + 2/27 = 128/27 epochs.
    rule = AshaRule(grace_period=2, max_t=20, reduction_factor=3)
    assert rule.milestones() == [2, 6, 18]
    assert rule.expected_epochs(20) == pytest.approx(128 / 27)
    # a trial of 10 epochs ends before the rung at 18: 2 + 4/3 + 4/9
    assert rule.expected_epochs(10) == pytest.approx(2 + 4 / 3 + 4 / 9)
    # trials longer than max_t stop there
    assert rule.bound_epochs(50) == 20 and rule.expected_epochs(50) == rule.expected_epochs(20)


def test_a_fractional_gpu_packs_trials_and_uses_the_packed_figure():
    assert (packing(1, 0.25).trials_per_device, packing(1, 0.25).devices_per_trial) == (4, 0.25)
    assert packing(1, 0.3).trials_per_device == 3  # Ray fits 3; the last 0.1 stays idle
    assert packing(2, 0.5).devices_per_trial == 1.0
    quarter = {"workers_per_trial": 1, "gpus_per_worker": 0.25}
    # Only the 1-trial figure (4 images/s alone): each of 4 packed trials assumed at 4 / 4.
    alone = plan_spec(spec(resources=quarter), table(row(images_per_s=4.0)))
    (cell,) = alone.cells
    assert alone.trials_per_device == 4 and cell.figure == "assumed"
    assert cell.images_per_s == pytest.approx(1.0)
    assert cell.trial_hours == pytest.approx(2.0)
    assert cell.device_hours == pytest.approx(2.0 * 0.25)  # a quarter of the GPU for 2 h
    assert "4 trials per device not calibrated" in cell.notes[0]
    # With a row measured at 4 trials per GPU (2 images/s each), that one is used as it is.
    packed = row(images_per_s=2.0, trials_per_device=4)
    measured = plan_spec(spec(resources=quarter), table(row(images_per_s=4.0), packed))
    (cell,) = measured.cells
    assert cell.figure == "measured" and cell.notes == []
    assert cell.trial_hours == pytest.approx(1.0)
    assert cell.device_hours == pytest.approx(0.25)
    # 8 trials of 1 h, 4 at a time on one GPU: 2 h.
    eight = {**spec().grid.model_dump(), "seeds": list(range(8))}
    on_one = plan_spec(spec(grid=eight, resources=quarter), table(packed), devices=1)
    assert on_one.totals.device_hours == pytest.approx(8 * 0.25)
    assert on_one.totals.wall_hours == pytest.approx(2.0)


# --- flags ------------------------------------------------------------------------------------


def forward_flops(backbone: str, image_size: int, num_classes: int) -> int:
    """FLOPs of one image's forward pass, counted on the CPU with real tensors."""
    model = build_backbone(backbone, num_classes, image_size).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops()


def test_an_uncalibrated_backbone_is_extrapolated_by_flops_and_flagged():
    grid = {**spec().grid.model_dump(), "backbone": ["smallnet", "resnet18_cifar"]}
    made = plan_spec(spec(grid=grid), table(row(images_per_s=1000.0)))
    small, resnet = made.cells
    assert small.figure == "measured" and not small.extrapolated
    assert resnet.figure == "extrapolated" and resnet.extrapolated
    ratio = forward_flops("resnet18_cifar", 32, 10) / forward_flops("smallnet", 32, 10)
    assert ratio > 1
    assert resnet.images_per_s == pytest.approx(1000.0 / ratio)
    assert "extrapolated from smallnet at 32 px" in resnet.notes[0]
    assert "GFLOPs" in resnet.notes[0]
    assert made.complete  # extrapolated, but with hours
    assert any("1 of 2 cells are extrapolated" in w for w in made.warnings)


def test_a_device_without_calibration_gets_no_hours():
    made = plan_spec(spec(), table(row()), device="H200", devices=8, price=3.0)
    assert not made.complete
    assert made.cells[0].device_hours is None and made.cells[0].figure == "none"
    assert made.totals.device_hours is None and made.totals.cost is None
    assert any("no calibration for device 'H200'" in w for w in made.warnings)
    empty = plan_spec(spec(), table())
    assert not empty.complete and "calibration table is empty" in empty.warnings[0]
    assert summary_lines(empty.model_dump(mode="json"))[0].endswith("no hours (see the warnings)")


def test_mixed_precision_and_batch_size_other_than_measured_are_flagged():
    # RSB A3 trains with mixed precision at batch 2048 over 8 workers: 256 per worker.
    made = plan_spec(
        spec(
            grid={**spec().grid.model_dump(), "loss": ["mbce"]},
            recipe="rsb_a3",
            resources={"workers_per_trial": 8, "gpus_per_worker": 1},
        ),
        table(row(batch_size=128)),
    )
    (cell,) = made.cells
    assert cell.batch_size == 256 and cell.figure == "assumed"
    assert any("without mixed precision; the recipe trains with it" in n for n in cell.notes)
    assert any("calibrated at batch 128 per worker, not 256" in n for n in cell.notes)


# --- the table, the commands, the service ----------------------------------------------------


def test_the_table_round_trips_and_a_row_of_the_same_key_is_replaced(tmp_path):
    path = tmp_path / "calibration.yaml"
    first = table(row(), row("resnet18_cifar"))
    write_table(first.with_row(row(images_per_s=9.0)), path)
    read = read_table(path)
    assert [(r.backbone, r.images_per_s) for r in read.rows] == [
        ("resnet18_cifar", 1.0),
        ("smallnet", 9.0),
    ]
    path.write_text("rows:\n- backbone: smallnet\n  images_per_s: -1\n")
    with pytest.raises(ValueError, match=r"calibration.yaml: rows.0"):
        read_table(path)


def dmsweep(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def test_plan_command_prints_the_plan_and_its_json(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec(epochs=2).model_dump(mode="json", exclude_unset=True)))
    table_file = tmp_path / "calibration.yaml"
    write_table(table(row()), table_file)
    common = ("plan", str(spec_file), "--table", str(table_file), "--gpus", "1")
    code, out = dmsweep(*common, "--price-per-gpu-hour", "2.5", "--json")
    assert code == 0, out
    made = Plan.model_validate(json.loads(out))
    assert made.totals.device_hours == pytest.approx(2.0)
    assert made.totals.cost == pytest.approx(5.0)
    assert made.tables[0] == str(table_file)
    code, out = dmsweep(*common)
    assert code == 0 and "synthetic/smallnet/mixup/mce" in out and "measured" in out
    assert "1 trials: 2 h on Test GPU 80GB; at least 2 h wall time on 1 device(s)" in out
    code, out = dmsweep(*common, "--gpu-type", "no such GPU")
    assert code == 1 and "no calibration for device 'no such GPU'" in out


def test_calibrate_measures_the_training_step_and_keeps_the_row(tmp_path):
    table_file = tmp_path / "calibration.yaml"
    options = ("--backbone", "smallnet", "--image-size", "16", "--batch-size", "8")
    timing = ("--steps", "2", "--warmup", "1", "--device", "cpu", "--recipe", "smoke")
    for _ in range(2):  # measured again: the row is replaced, not added
        code, out = dmsweep("calibrate", *options, *timing, "--table", str(table_file))
        assert code == 0, out
    (measured,) = read_table(table_file).rows
    assert (measured.backbone, measured.image_size, measured.batch_size) == ("smallnet", 16, 8)
    assert measured.kind == "cpu" and measured.device.startswith("CPU ")
    assert measured.trials_per_device == 1 and not measured.amp
    assert measured.images_per_s > 0 and measured.steps == 2 and measured.measured_at
    assert "written to" in out


def test_the_service_plans_with_its_table_and_never_fails_a_submit(tmp_path):
    table_file = tmp_path / "calibration.yaml"
    write_table(table(row()), table_file)
    settings = ServiceSettings.from_env(
        {
            "DMSWEEP_STORAGE_ROOT": str(tmp_path / "runs"),
            "DMSWEEP_CALIBRATION_TABLE": str(table_file),
            "DMSWEEP_PLAN_GPUS": "2",
            "DMSWEEP_PRICE_PER_GPU_HOUR": "4",
            "RAY_AUTH_MODE": "disabled",
        }
    )
    plan = submitted_plan(spec(), settings)
    assert plan["device"] == GPU and plan["devices"] == 2
    assert plan["totals"]["device_hours"] == pytest.approx(2.0)
    assert plan["totals"]["cost"] == pytest.approx(8.0)
    table_file.write_text("rows: [unclosed")
    assert "the plan could not be made" in submitted_plan(spec(), settings)["error"]
    assert summary_lines({"error": "why"}) == ["no plan: why"]
    with pytest.raises(ValueError, match="DMSWEEP_PRICE_PER_GPU_HOUR"):
        ServiceSettings.from_env({"DMSWEEP_PRICE_PER_GPU_HOUR": "inf", "RAY_AUTH_MODE": "disabled"})


def test_the_shipped_table_is_valid():
    from service.plan.calibration import SHIPPED_TABLE

    assert isinstance(read_table(Path(SHIPPED_TABLE)), CalibrationTable)
