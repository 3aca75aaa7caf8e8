"""Two ranks of a transfer run (gloo, CPU) keep one model: Self-Tuning with its AS term, and
Co-Tuning, whose category relationship every rank must learn the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.support.ports import free_port
from tests.support.transfer import transfer_trial, write_weights
from trainers.ssl.loop import (
    average_statistics,
    build_semi_supervised_trial,
    semi_supervised_step,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*the classifier does not fit this model")

CELLS = {
    "self_tuning": ({"method": "mixup", "alpha": 1.0}, {"name": "dm_ce", "eta": 0.1}),
    "co_tuning": ({"method": "vanilla"}, {"name": "ce"}),
}


def _rank_worker(rank: int, port: int, weights: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        saved = {}
        for name, (mixing, loss) in CELLS.items():
            trial = build_semi_supervised_trial(
                transfer_trial(Path(weights), name, mixing, loss, batch_size=16)
            )
            initial = [t.detach().clone() for t in trial.model.state_dict().values()]
            for _ in range(2):
                semi_supervised_step(trial)
            average_statistics(trial)  # as the loop does before each evaluation
            saved[name] = {
                "params": [t.detach().clone() for t in trial.model.state_dict().values()],
                "initial": initial,
                "algorithm": trial.algorithm.state_dict(),
            }
        torch.save(saved, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_one_model_and_one_relationship(tmp_path):
    weights = write_weights(tmp_path)
    mp.spawn(_rank_worker, args=(free_port(), str(weights), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in CELLS:
        first, second = rank0[name], rank1[name]
        for a, b in zip(first["params"], second["params"], strict=True):
            assert torch.equal(a, b), name
        assert any(
            not torch.equal(a, s) for a, s in zip(first["params"], first["initial"], strict=True)
        )
        # Self-Tuning's queues and key encoder, Co-Tuning's source head and relationship.
        for key, value in first["algorithm"].items():
            assert torch.equal(value, second["algorithm"][key]), (name, key)
    # Both ranks' relationship is the one a single process learns from all labelled images.
    alone = build_semi_supervised_trial(transfer_trial(weights, "co_tuning", batch_size=16))
    shared = rank0["co_tuning"]["algorithm"]["relationship"]
    assert torch.allclose(shared, alone.algorithm.relationship, atol=1e-6)
