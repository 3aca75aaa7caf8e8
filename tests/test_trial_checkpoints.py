"""A one-worker trial's checkpoints in its folder: whole or absent, newest found, few kept."""

from __future__ import annotations

from pathlib import Path

from service.sweep.worker import CHECKPOINTS_KEPT, TrialCheckpoints


def loop_checkpoint(tmp_path: Path, epoch: int) -> str:
    """A folder as the loop hands one over (it removes it once the report returns)."""
    folder = tmp_path / f"loop-{epoch}"
    folder.mkdir()
    (folder / "state.pt").write_bytes(bytes([epoch]) * 64)
    return str(folder)


def test_the_newest_whole_checkpoint_is_found_with_its_metrics(tmp_path):
    checkpoints = TrialCheckpoints(tmp_path / "train" / "trial-1")
    assert checkpoints.newest() is None  # a trial that never kept one starts from epoch 0
    for epoch in (1, 2, 3, 10):
        checkpoints.keep(loop_checkpoint(tmp_path, epoch), {"epoch": epoch, "val_top1": epoch / 2})
    newest = checkpoints.newest()
    assert newest is not None and newest.name == "checkpoint_000010"  # 10 after 3, not before
    assert (newest / "state.pt").read_bytes() == bytes([10]) * 64
    assert TrialCheckpoints.metrics(newest) == {"epoch": 10, "val_top1": 5.0}
    kept = sorted(p.name for p in checkpoints.folder.iterdir())
    assert len(kept) == CHECKPOINTS_KEPT == 2
    assert kept == ["checkpoint_000003", "checkpoint_000010"]


def test_a_copy_cut_short_is_never_taken_for_a_checkpoint(tmp_path):
    """A process killed while copying leaves a hidden partial folder: ignored, then replaced."""
    checkpoints = TrialCheckpoints(tmp_path / "trial-2")
    checkpoints.keep(loop_checkpoint(tmp_path, 1), {"epoch": 1})
    partial = checkpoints.folder / ".checkpoint_000002.partial"
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"half")
    assert checkpoints.newest() == checkpoints.folder / "checkpoint_000001"
    checkpoints.keep(loop_checkpoint(tmp_path, 2), {"epoch": 2})
    assert not partial.exists()
    newest = checkpoints.newest()
    assert newest is not None and (newest / "state.pt").read_bytes() == bytes([2]) * 64


def test_an_epoch_kept_again_replaces_the_earlier_copy(tmp_path):
    checkpoints = TrialCheckpoints(tmp_path / "trial-3")
    checkpoints.keep(loop_checkpoint(tmp_path, 4), {"epoch": 4, "val_top1": 1.0})
    again = tmp_path / "again"
    again.mkdir()
    (again / "state.pt").write_bytes(b"second")
    checkpoints.keep(str(again), {"epoch": 4, "val_top1": 2.0})
    newest = checkpoints.newest()
    assert newest is not None and (newest / "state.pt").read_bytes() == b"second"
    assert TrialCheckpoints.metrics(newest)["val_top1"] == 2.0


def test_a_trial_whose_last_epoch_is_kept_is_finished(tmp_path):
    """Killed after its last checkpoint was kept and before its record: nothing left to train."""
    checkpoints = TrialCheckpoints(tmp_path / "trial-4")
    assert checkpoints.finished() is None
    checkpoints.keep(loop_checkpoint(tmp_path, 1), {"epoch": 1, "val_top1": 3.0})
    assert checkpoints.finished() is None  # mid-trial: it resumes
    last = {"epoch": 2, "val_top1": 4.0, "top1_best": 4.0, "top1_median_last10": 3.5}
    checkpoints.keep(loop_checkpoint(tmp_path, 2), last)
    assert checkpoints.finished() == last
