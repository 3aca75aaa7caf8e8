"""The semi-supervised loop: metrics per interval, bitwise resume, two ranks as one run."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.support.ports import free_port
from tests.support.training import whole_interrupted_resumed
from trainers.checkpoint import load_checkpoint
from trainers.config import TrainConfig
from trainers.distributed import average_buffers
from trainers.ssl.loop import (
    _share_per_image_state,
    build_semi_supervised_trial,
    semi_supervised_step,
)

# Every algorithm with the cells it runs: the algorithm alone, and its mixing rows.
ALGORITHM_CELLS = [
    ("labelled_only", {"method": "vanilla"}, {"name": "ce"}),
    ("fixmatch", {"method": "cutmix", "alpha": 1.0}, {"name": "dm_ce", "eta": 0.1}),
    ("flexmatch", {"method": "vanilla"}, {"name": "ce"}),
    ("uda", {"method": "vanilla"}, {"name": "ce"}),
    ("pseudo_label", {"method": "mixup", "alpha": 1.0}, {"name": "mce"}),
    ("mixmatch", {"method": "mixup", "alpha": 0.5}, {"name": "dm_ce", "eta": 0.1}),
    ("remixmatch", {"method": "mixup", "alpha": 0.75}, {"name": "mce"}),
]


def ssl_trial(algorithm: str = "labelled_only", mixing=None, loss=None, **changes) -> TrainConfig:
    """A semi-supervised trial of smallnet on 200 synthetic 16 px images of 5 classes, 50
    labelled; 6 steps in 3 intervals: about a second on the CPU."""
    settings = {
        "data": {
            "name": "synthetic",
            "num_classes": 5,
            "image_size": 16,
            "synthetic_images": {"train": 200, "test": 50},
            "label_fraction": 50,
        },
        "backbone": {"name": "smallnet"},
        "algorithm": algorithm,
        "recipe": "ssl",
        "batch_size": 8,
        "mixing": mixing or {"method": "vanilla"},
        "loss": loss or {"name": "ce"},
        "semi_supervised": {"steps": 6, "eval_every": 2, "unlabelled_ratio": 2},
        **changes,
    }
    return TrainConfig.model_validate(settings)


@pytest.mark.parametrize(("algorithm", "mixing", "loss"), ALGORITHM_CELLS)
def test_each_interval_reports_the_contract_and_a_resume_continues_bitwise(
    tmp_path, algorithm, mixing, loss
):
    trial = ssl_trial(algorithm, mixing, loss)
    whole, _, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=2)
    assert [m["epoch"] for m in whole.metrics] == [1, 2, 3]
    assert [m["step"] for m in whole.metrics] == [2, 4, 6]
    last = whole.metrics[-1]
    for key in ("train_loss", "val_top1", "val_top1_ema", "lr", "top1_best", "top1_ema_best"):
        assert key in last
    assert last["top1_ema_best"] == max(m["val_top1_ema"] for m in whole.metrics)
    # The ssl cosine at the last interval's first step, 4 of 6, at 0.03 * 8 / 64.
    assert last["lr"] == pytest.approx(0.00375 * math.cos(7 * math.pi * 4 / (16 * 6)))
    # Both streams, the generator, the EMA and the algorithm's state come back.
    expected = load_checkpoint(whole.checkpoints[-1])
    got = load_checkpoint(resumed.checkpoints[-1])
    for part in ("model", "ema", "algorithm"):
        for key, value in expected[part].items():
            assert torch.equal(value, got[part][key]), (part, key)
    assert resumed.metrics[-1]["val_top1_ema"] == last["val_top1_ema"]


def test_a_large_seed_draws_its_streams():
    trial = build_semi_supervised_trial(ssl_trial(seed=2**31 - 1))
    record = semi_supervised_step(trial)
    assert torch.isfinite(record.loss)


def test_the_labelled_images_are_the_drawn_ones_and_the_unlabelled_are_all():
    trial = build_semi_supervised_trial(ssl_trial())
    assert len(trial.labelled) == 50
    counts = torch.bincount(trial.train_set.labels[trial.labelled], minlength=5)
    assert counts.tolist() == [10] * 5  # class-balanced
    assert trial.unlabelled_stream.count == 200
    again = build_semi_supervised_trial(ssl_trial())
    assert torch.equal(trial.labelled, again.labelled)  # fixed by the seed
    other = build_semi_supervised_trial(ssl_trial(seed=1))
    assert not torch.equal(trial.labelled, other.labelled)


def _rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        trial = build_semi_supervised_trial(ssl_trial("flexmatch", batch_size=16))
        initial = [p.detach().clone() for p in trial.model.parameters()]
        seen = []
        for _ in range(4):
            seen.append(
                trial.labelled[
                    trial.labelled_stream.batch(trial.step, trial.batch, rank, 2)
                ].clone()
            )
            semi_supervised_step(trial)
        # Each rank writes its own entries; after the exchange both hold both writes.
        own = torch.tensor([rank, 2 + rank])
        trial.algorithm.memory[own] = 3 + rank
        _share_per_image_state(trial.algorithm, own, trial.ranks)
        # ReMixMatch's running class distribution and the EMA (buffers averaged before an
        # evaluation, as the loop does) come out the same on both ranks too.
        other = build_semi_supervised_trial(
            ssl_trial(
                "remixmatch", {"method": "mixup", "alpha": 0.75}, {"name": "mce"}, batch_size=16
            )
        )
        for _ in range(2):
            semi_supervised_step(other)
        average_buffers(other.ema.module, other.ranks)
        torch.save(
            {
                "memory": trial.algorithm.memory,
                "params": [p.detach() for p in trial.model.parameters()],
                "initial": initial,
                "seen": torch.cat(seen),
                "alignment": other.algorithm.state_dict(),
                "ema": other.ema.state_dict(),
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_their_own_shares_and_keep_one_model(tmp_path):
    mp.spawn(_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(rank0["params"], rank1["params"], strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, s) for a, s in zip(rank0["params"], rank0["initial"], strict=True)
    )
    # FlexMatch's memory of confident predictions is the same on both ranks.
    assert torch.equal(rank0["memory"], rank1["memory"])
    assert rank0["memory"][:4].tolist() == [3, 4, 3, 4]
    for part in ("alignment", "ema"):
        for key, value in rank0[part].items():
            assert torch.equal(value, rank1[part][key]), (part, key)
    # Each step's labelled batch is split between the ranks: no image twice within a step
    # (steps 0-2 lie inside the first pass over the 50 labelled images; step 3 spans two).
    for step in range(3):
        share0 = rank0["seen"][step * 8 : (step + 1) * 8]
        share1 = rank1["seen"][step * 8 : (step + 1) * 8]
        assert not set(share0.tolist()) & set(share1.tolist())
