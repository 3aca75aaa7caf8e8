"""The training loop end to end, in this process and under torch.distributed: what it reports,
that it learns, that a resumed run is the same run, and that it stops on a broken loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.support.ports import free_port
from tests.support.training import (
    EPOCH_METRICS,
    SUMMARY_METRICS,
    Recorder,
    synthetic_trial,
    whole_interrupted_resumed,
)
from trainers.evaluate import accuracy
from trainers.loop import NonFiniteLossError, build_trial, load_checkpoint, run


def test_reports_every_epoch_and_learns(tmp_path):
    recorder = Recorder(keep=tmp_path)
    final = run(synthetic_trial(), recorder)
    assert [m["epoch"] for m in recorder.metrics] == [1, 2, 3]
    for metrics in recorder.metrics:
        assert set(metrics) >= {"epoch", *EPOCH_METRICS}
        assert 0 <= metrics["mixed_top2"] <= metrics["mixed_top1"] <= 100
        assert metrics["val_top1"] <= metrics["val_top5"] <= 100
    assert set(SUMMARY_METRICS) <= set(final)
    assert final["top1_best"] == max(m["val_top1"] for m in recorder.metrics)
    assert final["top1_median_last10"] == sorted(m["val_top1"] for m in recorder.metrics)[1]
    assert final["val_top1"] > 40  # chance is 20%
    assert recorder.metrics[-1]["train_loss"] < recorder.metrics[0]["train_loss"]
    # A checkpoint each epoch (checkpoint_every=1); the loop's own folders are gone after report.
    assert len(recorder.checkpoints) == 3
    assert load_checkpoint(recorder.checkpoints[-1])["epoch"] == 3


@pytest.mark.parametrize(
    ("method", "loss"),
    [
        ("vanilla", {"name": "ce", "eta": None}),
        ("mixup_cutmix", {"name": "mbce", "eta": None}),
        ("manifoldmix", {"name": "dm_bce", "eta": None, "xi": 1.0, "t": 0.5}),
        ("resizemix", {"name": "mbce_two", "eta": None}),
    ],
)
def test_every_kind_of_method_trains(method, loss):
    alpha = None if method in ("vanilla", "resizemix") else 1.0
    trial = synthetic_trial(mixing={"method": method, "alpha": alpha}, loss=loss, epochs=1)
    recorder = Recorder()
    run(trial, recorder)
    assert recorder.metrics[-1]["train_loss"] > 0


def test_resumed_run_ends_with_bitwise_the_same_weights(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        # With an EMA of the weights, which the checkpoint carries along with its history.
        trial = synthetic_trial(epochs=4, checkpoint_every=1, recipe_overrides={"ema_decay": 0.9})
        whole, _, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [m["epoch"] for m in resumed.metrics] == [3, 4]
    for a, b in zip(whole.metrics[2:], resumed.metrics, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_top1"] == b["val_top1"]
        assert a["val_top1_ema"] == b["val_top1_ema"]
    assert whole.metrics[-1]["top1_ema_best"] == resumed.metrics[-1]["top1_ema_best"]
    expected = load_checkpoint(whole.checkpoints[-1])["model"]
    got = load_checkpoint(resumed.checkpoints[-1])["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_a_recipe_without_an_ema_reports_no_ema_metrics():
    final = run(synthetic_trial(epochs=1), Recorder())
    assert "val_top1_ema" not in final and "top1_ema_best" not in final


@pytest.mark.parametrize("decay", [1e-9, 1 - 1e-9])
def test_the_ema_is_evaluated_each_epoch(decay):
    """The EMA's accuracy is its own: a decay of ~0 copies the model each step (the same top-1
    as the raw model), a decay of ~1 keeps the initial weights (the untrained model's top-1)."""
    trial = synthetic_trial(epochs=2, recipe_overrides={"ema_decay": decay})
    recorder = Recorder()
    final = run(trial, recorder)
    ema = [m["val_top1_ema"] for m in recorder.metrics]
    assert final["top1_ema_best"] == max(ema)
    if decay < 0.5:
        assert ema == [m["val_top1"] for m in recorder.metrics]
    else:
        untrained = build_trial(trial)
        expected, _ = accuracy(
            untrained.model, untrained.test_set, untrained.eval_transform, untrained.ranks, 256
        )
        assert ema == [expected, expected]
        assert final["val_top1"] != expected  # the raw model did train


def test_a_diverging_loss_stops_the_run_naming_the_step():
    trial = synthetic_trial(recipe_overrides={"lr": 1e30}, epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(epoch 1\)"):
        run(trial, Recorder())


def test_fgsm_error_is_reported_when_asked():
    recorder = Recorder()
    final = run(synthetic_trial(epochs=1, eval={"fgsm": True}), recorder)
    assert 0 <= final["fgsm_error"] <= 100
    # An attack cannot do better than no attack on the same images.
    assert final["fgsm_error"] >= 100 - final["val_top1"] - 1e-9


# --------------------------------------------------------------------------- torch.distributed


def _ddp_worker(
    rank: int,
    world_size: int,
    port: int,
    out: str,
    stop_after=None,
    resume_from=None,
    changes: dict | None = None,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        torch.set_num_threads(1)
        recorder = Recorder(keep=Path(out) / f"rank{rank}", stop_after=stop_after)
        try:
            trial = synthetic_trial(**{"epochs": 3, "batch_size": 32, **(changes or {})})
            final = run(trial, recorder, resume_from)
        except KeyboardInterrupt:
            final = None
        torch.save({"metrics": recorder.metrics, "final": final}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(out: Path, **options) -> tuple[dict, dict]:
    args = (
        2,
        free_port(),
        str(out),
        options.get("stop_after"),
        options.get("resume_from"),
        options.get("changes"),
    )
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def test_two_ranks_train_one_model_and_resume_as_one_run(tmp_path):
    rank0, rank1 = _spawn(tmp_path / "whole")
    # Loss and accuracy are reduced across ranks; the mixed accuracies are computed by each rank
    # on the same fixed batch with its own weights, so they agree only if the weights do.
    for a, b in zip(rank0["metrics"], rank1["metrics"], strict=True):
        for key in ("train_loss", "val_top1", "val_top5", "mixed_top1", "mixed_top2"):
            assert a[key] == b[key]
    # Only rank 0 writes checkpoints.
    assert (tmp_path / "whole" / "rank0" / "epoch3").is_dir()
    assert not (tmp_path / "whole" / "rank1").exists()
    assert rank0["final"]["val_top1"] > 30

    # Interrupted after epoch 2 and resumed on two ranks: each rank gets its own random streams
    # back, so the run ends with exactly the weights of the uninterrupted one.
    _spawn(tmp_path / "cut", stop_after=2)
    checkpoint = tmp_path / "cut" / "rank0" / "epoch2"
    assert len(load_checkpoint(checkpoint)["rng"]) == 2
    _spawn(tmp_path / "resumed", resume_from=str(checkpoint))
    expected = load_checkpoint(tmp_path / "whole" / "rank0" / "epoch3")["model"]
    got = load_checkpoint(tmp_path / "resumed" / "rank0" / "epoch3")["model"]
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_two_ranks_train_one_model_with_puzzlemix(tmp_path):
    """PuzzleMix's saliency pass runs on each rank's unwrapped network (no DDP hooks): the
    ranks still step together, so the weights, and with them the mixed accuracies, agree."""
    changes = {
        "mixing": {"method": "puzzlemix", "alpha": 1.0},
        "data": {"synthetic_images": {"train": 64, "test": 32}},
        "epochs": 1,
    }
    rank0, rank1 = _spawn(tmp_path, changes=changes)
    assert len(rank0["metrics"]) == len(rank1["metrics"]) == 1
    for key in ("train_loss", "val_top1", "mixed_top1", "mixed_top2"):
        assert rank0["metrics"][0][key] == rank1["metrics"][0][key]
    assert 0 < rank0["final"]["train_loss"] < float("inf")
