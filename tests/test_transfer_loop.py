"""The transfer algorithms in the step-based loop (trainers/ssl/loop.py): the step schedule on
steps, the head's lr, the unlabelled rest, the 224-px-style weak view, Co-Tuning's relationship,
no EMA, and a bitwise resume of each algorithm."""

from __future__ import annotations

import pytest
import torch

from tests.support.training import Recorder, whole_interrupted_resumed
from tests.support.transfer import SOURCE_CLASSES, TARGET_CLASSES, transfer_trial, write_weights
from tests.test_ssl_loop import ssl_trial
from trainers.augment import EvalTransform, mean_std
from trainers.backbones import SmallNet
from trainers.checkpoint import load_checkpoint
from trainers.loop import run
from trainers.ssl.loop import build_semi_supervised_trial, semi_supervised_step
from trainers.ssl.views import Views

# The fixture's weights have a 7-class head; the 3-class targets keep a fresh one, as meant.
pytestmark = pytest.mark.filterwarnings("ignore:.*the classifier does not fit this model")

LR = 1e-3 * 8 / 24  # the transfer recipe's lr at 8 images a step (its batch is 24)
AS_CELL = ({"method": "mixup", "alpha": 1.0}, {"name": "dm_ce", "eta": 0.1})


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("weights"))


def test_the_step_schedule_drops_at_its_milestone_steps(weights):
    config = transfer_trial(weights, semi_supervised={"steps": 27_000, "eval_every": 3000})
    factor = build_semi_supervised_trial(config).scheduler.lr_lambdas[0]
    # Self-Tuning's MultiStepLR: x0.1 at 6k, 12k, 18k and 24k of 27k steps.
    expected = {0: 1.0, 5999: 1.0, 6000: 0.1, 11999: 0.1, 12000: 0.01, 17999: 0.01}
    expected |= {18000: 1e-3, 23999: 1e-3, 24000: 1e-4, 26999: 1e-4}
    for step, value in expected.items():
        assert factor(step) == pytest.approx(value, rel=1e-12), step


def _lr_of(trial) -> dict[int, float]:
    return {id(p): g["lr"] for g in trial.optimizer.param_groups for p in g["params"]}


def test_the_new_head_learns_at_ten_times_the_lr(weights):
    trial = build_semi_supervised_trial(transfer_trial(weights, "self_tuning"))
    lrs = _lr_of(trial)
    head = {id(p) for p in trial.model.head.parameters()}
    for name, p in trial.model.named_parameters():
        assert lrs[id(p)] == pytest.approx(10 * LR if id(p) in head else LR), name
    for p in trial.algorithm.projector.parameters():  # Self-Tuning's projector: the base lr
        assert lrs[id(p)] == pytest.approx(LR)
    for p in trial.algorithm.key_encoder.parameters():  # frozen copies: not optimised
        assert id(p) not in lrs
    assert trial.optimizer.param_groups[0]["lr"] == pytest.approx(LR)  # the reported lr
    assert {g["weight_decay"] for g in trial.optimizer.param_groups} == {5e-4}
    assert {g["nesterov"] for g in trial.optimizer.param_groups} == {True}
    co = build_semi_supervised_trial(transfer_trial(weights, "co_tuning"))
    lrs = _lr_of(co)
    # Co-Tuning's source head at the backbone's lr (tllib, Co-Tuning's train.py).
    for p in co.algorithm.source_head.parameters():
        assert lrs[id(p)] == pytest.approx(LR)
    assert lrs[id(co.model.head.weight)] == pytest.approx(10 * LR)


def test_transfer_draws_the_unlabelled_rest_and_ssl_every_image(weights):
    trial = build_semi_supervised_trial(transfer_trial(weights, "fine_tuning", *AS_CELL))
    labelled, rest = set(trial.labelled.tolist()), set(trial.unlabelled.tolist())
    assert len(labelled) == 30 and len(rest) == 90
    assert not labelled & rest and labelled | rest == set(range(120))
    assert trial.unlabelled_stream is not None and trial.unlabelled_stream.count == 90
    assert trial.unlabelled_batch == 8 and trial.algorithm.views == ("weak",)
    record = semi_supervised_step(trial)
    assert record.unlabelled == 8 and torch.isfinite(record.loss)
    # Alone, fine-tuning draws no unlabelled image.
    alone = build_semi_supervised_trial(transfer_trial(weights, "fine_tuning"))
    assert alone.unlabelled_batch == 0
    assert semi_supervised_step(alone).unlabelled == 0
    # The SSL algorithms keep TorchSSL's whole train split, labelled images included.
    ssl = build_semi_supervised_trial(ssl_trial("fixmatch"))
    assert torch.equal(ssl.unlabelled, torch.arange(200))


def test_the_weak_view_of_photos_is_a_resized_crop_and_a_flip():
    # A column ramp: pixel (r, c) is 16 c in every channel. mean 0, std 1/255: values unchanged.
    ramp = (torch.arange(16) * 16).to(torch.uint8).expand(32, 3, 16, 16).contiguous()
    identity = Views(16, (0.0,) * 3, (1 / 255,) * 3, crop="random_resized_crop", rrc_scale=(1, 1))
    whole = identity.weak(ramp, torch.Generator().manual_seed(0))
    assert whole.shape == (32, 3, 16, 16)
    flipped = ramp.flip(3).float()
    for out in whole:  # the whole image, resized to itself, mirrored or not
        assert torch.allclose(out, ramp[0].float(), atol=1e-3) or torch.allclose(
            out, flipped[0], atol=1e-3
        )
    quarter = Views(
        16, (0.0,) * 3, (1 / 255,) * 3, crop="random_resized_crop", rrc_scale=(0.25, 0.25)
    )
    crops = quarter.weak(ramp, torch.Generator().manual_seed(1))
    steps = crops[:, 0, 0, 1:] - crops[:, 0, 0, :-1]
    rising = (steps >= -1e-3).all(1)
    falling = (steps <= 1e-3).all(1)
    assert (rising | falling).all() and rising.any() and falling.any()  # flips, both ways
    # A quarter of the area: a box about half the side wide (at most 9 of 16 columns), stretched.
    spans = crops[:, 0, 0].amax(1) - crops[:, 0, 0].amin(1)
    assert (spans <= 9 * 16).all() and (spans > 0).all()
    assert torch.equal(crops[:, :, 0], crops[:, :, 15])  # rows stay rows: a box, not a warp
    assert crops.amin() >= 0 and crops.amax() <= 240


def test_co_tuning_learns_its_relationship_from_the_labelled_images(weights):
    trial = build_semi_supervised_trial(transfer_trial(weights, "co_tuning"))
    model, head = trial.model.eval(), trial.algorithm.source_head
    mean, std = mean_std("synthetic")
    view = EvalTransform(trial.recipe, 16, mean, std)
    images = view(trial.train_set.read(trial.labelled))
    labels = trial.train_set.labels[trial.labelled]
    with torch.no_grad():
        x = images
        for stage in model.stages:  # SmallNet's forward up to its pooled features
            x = stage(x)
        probs = torch.softmax(0.8840456604957581 * head(x.mean(dim=(2, 3))), 1)
    expected = torch.stack([probs[labels == c].mean(0) for c in range(TARGET_CLASSES)])
    got = trial.algorithm.relationship
    assert got.shape == (TARGET_CLASSES, SOURCE_CLASSES)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, torch.full_like(got, 1 / SOURCE_CLASSES), atol=1e-4)


def test_fine_tuning_from_weights_reports_the_best_top1_and_no_ema(weights):
    recorder = Recorder()
    final = run(transfer_trial(weights, "fine_tuning"), recorder)
    assert [m["step"] for m in recorder.metrics] == [2, 4, 6]
    assert final["top1_best"] == max(m["val_top1"] for m in recorder.metrics)
    assert "top1_median_last10" in final
    for metrics in recorder.metrics:
        assert "val_top1_ema" not in metrics and "top1_ema_best" not in metrics
    # lr of the last interval's first step (4 of 6): milestones round(6 x (6, 12, 18, 24) / 27)
    # = 1, 3, 4, 5, so 3 drops have happened.
    assert final["lr"] == pytest.approx(LR * 1e-3)
    # The body starts from the file's weights, the head fresh (3 classes, not the file's 7).
    trial = build_semi_supervised_trial(transfer_trial(weights, "fine_tuning"))
    state = torch.load(weights)
    assert torch.equal(trial.model.stages[0][0].weight, state["stages.0.0.weight"])
    assert trial.model.head.weight.shape == (TARGET_CLASSES, 64)


def test_a_resumed_co_tuning_keeps_the_checkpoints_relationship(tmp_path, weights):
    trial = transfer_trial(weights, "co_tuning")
    interrupted = Recorder(keep=tmp_path / "interrupted", stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run(trial, interrupted)
    folder = interrupted.checkpoints[-1]
    state = load_checkpoint(folder)
    # Another valid relationship than the one the images give: the checkpoint's must win.
    chosen = torch.softmax(torch.randn(TARGET_CLASSES, SOURCE_CLASSES), 1)
    state["algorithm"]["relationship"] = chosen
    torch.save(state, folder / "state.pt")
    resumed = Recorder(keep=tmp_path / "resumed")
    run(trial, resumed, resume_from=folder)
    assert torch.equal(
        load_checkpoint(resumed.checkpoints[-1])["algorithm"]["relationship"], chosen
    )


RESUMED_CELLS = [
    ("fine_tuning", None, None, {}),
    ("bss", *AS_CELL, {}),
    ("co_tuning", None, None, {}),
    ("co_tuning", {"method": "cutmix", "alpha": 1.0}, {"name": "mce"}, {}),
    ("self_tuning", *AS_CELL, {"transfer": {"labelled_mixup": "mce"}}),
]


@pytest.mark.parametrize(("algorithm", "mixing", "loss", "changes"), RESUMED_CELLS)
def test_a_resume_continues_bitwise(tmp_path, weights, algorithm, mixing, loss, changes):
    trial = transfer_trial(weights, algorithm, mixing, loss, **changes)
    whole, _, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=2)
    expected = load_checkpoint(whole.checkpoints[-1])
    got = load_checkpoint(resumed.checkpoints[-1])
    assert expected["ema"] is None
    for part in ("model", "algorithm", "optimizer"):
        flat_expected = _tensors(expected[part])
        flat_got = _tensors(got[part])
        assert flat_expected.keys() == flat_got.keys()
        for key, value in flat_expected.items():
            assert torch.equal(value, flat_got[key]), (part, key)
    assert resumed.metrics[-1]["val_top1"] == whole.metrics[-1]["val_top1"]
    # An AS term draws unlabelled images and reports its mask rate.
    assert ("mask_rate" in whole.metrics[-1]) == (mixing is not None or algorithm == "self_tuning")
    assert resumed.metrics[-1]["train_loss"] == whole.metrics[-1]["train_loss"]


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state dict, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found |= _tensors(value, f"{prefix}/{key}")
    return found


def test_a_source_head_that_fits_the_target_is_not_kept(tmp_path):
    # A 3-class source for a 3-class target: load_weights would keep the file's head, whose
    # classes mean nothing to the target's. Every transfer algorithm starts a new one, drawn as
    # Self-Tuning's (N(0, 0.01), zero bias); the body is the file's.
    torch.manual_seed(3)
    source = SmallNet(TARGET_CLASSES)
    with torch.no_grad():
        source.head.bias.fill_(5.0)
    path = tmp_path / "smallnet3.pt"
    torch.save(source.state_dict(), path)
    model = build_semi_supervised_trial(transfer_trial(path, "fine_tuning")).model
    assert torch.equal(model.stages[0][0].weight, source.stages[0][0].weight)
    assert not torch.equal(model.head.weight, source.head.weight)
    assert torch.count_nonzero(model.head.bias) == 0
    assert 0.005 < model.head.weight.std().item() < 0.015
