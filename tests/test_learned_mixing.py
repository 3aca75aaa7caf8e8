"""AutoMix and SAMix as a trial's method: the loop's seam (``trainers.mixing.learned``).

Where each loss's gradient goes is read off autograd; the features the Mix Block reads are
compared with the backbone's stages computed by hand (or by timm's own intermediate features);
the momentum encoder and the Mix Block's schedule with their formulas after real steps; the
loop trains on the shared CIFAR-10 JPEGs with every loss, resumes bitwise, and runs on two
ranks that keep one Mix Block. Nothing is mocked. (The Mix Block's core: ``test_mix_block.py``.)
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.support.ports import free_port
from tests.support.training import (
    EVERY_LOSS,
    Recorder,
    cifar10_jpg_trial,
    synthetic_trial,
    whole_interrupted_resumed,
)
from trainers.backbones import build_backbone
from trainers.loop import build_trial, load_checkpoint, run, train_step
from trainers.mixing.learned import LearnedMixing, default_settings
from trainers.objectives import objective

torch.set_num_threads(1)

METHODS = ("automix", "samix")
MCE = objective("mce")


def learned_for(
    method: str, model: torch.nn.Module, *, dataset: str = "synthetic", size: int = 16, **options
) -> LearnedMixing:
    """The learned policy of ``method`` for ``model``: alpha 2, one lambda per batch."""
    options.setdefault("total_steps", 1)
    return LearnedMixing(
        method, model, dataset=dataset, image_size=size, alpha=2.0, lambda_mode="batch", **options
    )


def learned_pair(method: str, *, clean_loss_weight: float = 1.0, size: int = 16):
    torch.manual_seed(0)
    model = build_backbone("smallnet", 5, size)
    settings = dataclasses.replace(
        default_settings(method, "synthetic", size), clean_loss_weight=clean_loss_weight
    )
    return model, learned_for(method, model, size=size, total_steps=10, settings=settings)


def batch(n: int = 8, size: int = 16):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % 5


def touched(module: torch.nn.Module) -> bool:
    """Whether any parameter of ``module`` received a non-zero gradient."""
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_each_loss_reaches_only_what_the_method_trains(method):
    inputs, targets = batch()
    generator = torch.Generator().manual_seed(0)

    # The trial's objective on the backbone's batch: the backbone only (mask detached).
    model, learned = learned_pair(method)
    step = learned.mixing(model, inputs, targets, generator, MCE)
    objective("dm_ce", eta=1.0)(step.logits, step.batch).backward()
    assert touched(model)
    assert all(p.grad is None for p in learned.mix_block.parameters())
    assert all(p.grad is None for p in learned.encoder.parameters())

    # The Mix Block's loss, through the encoder's frozen copy: the Mix Block only.
    model, learned = learned_pair(method, clean_loss_weight=0.0)
    learned.mixing(model, inputs, targets, generator, MCE).auxiliary.backward()
    assert touched(learned.mix_block)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in learned.encoder.parameters())

    # With the objective on the clean batch (OpenMixup's head_one_q, weight 1) the backbone
    # takes it.
    model, learned = learned_pair(method, clean_loss_weight=1.0)
    learned.mixing(model, inputs, targets, generator, MCE).auxiliary.backward()
    assert touched(learned.mix_block) and touched(model)


def test_the_clean_batch_takes_the_trials_objective_unmixed():
    # With and without the clean batch's loss (weight 1 and 0), the same Mix Block and draws:
    # the difference is that loss, which must be the trial's objective at lambda 1, label
    # smoothing and BCE alike (OpenMixup's head_one_q, here through the one classifier).
    inputs, targets = batch()
    cases = [
        (
            objective("mce", label_smoothing=0.1),
            lambda z: F.cross_entropy(z, targets, label_smoothing=0.1),
        ),
        (
            objective("mbce"),
            lambda z: F.binary_cross_entropy_with_logits(z, F.one_hot(targets, 5).float()),
        ),
    ]
    for loss, expected in cases:
        model, with_clean = learned_pair("automix", clean_loss_weight=1.0)
        _, without = learned_pair("automix", clean_loss_weight=0.0)
        without.load_state_dict(with_clean.state_dict())
        a = with_clean.mixing(model, inputs, targets, torch.Generator().manual_seed(4), loss)
        b = without.mixing(model, inputs, targets, torch.Generator().manual_seed(4), loss)
        with torch.no_grad():
            clean = expected(model(inputs)).item()
        assert (a.auxiliary - b.auxiliary).item() == pytest.approx(clean, rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_the_backbone_batch_is_mixed_pixel_by_pixel_by_a_mask_in_the_unit_interval(method):
    model, learned = learned_pair(method)
    inputs, targets = batch()
    step = learned.mixing(model, inputs, targets, torch.Generator().manual_seed(1), MCE)
    mixed, perm, lam = step.batch.inputs, step.batch.perm, step.batch.lam
    # Every pixel is m * x_a + (1 - m) * x_b with one m in [0, 1] for the three channels.
    a, b = inputs, inputs[perm]
    moved = (a - b).abs() > 1e-3
    mask = torch.where(moved, (mixed - b) / (a - b), torch.nan)
    m = mask.nanmean(dim=1, keepdim=True)
    assert float(m.nan_to_num(0.5).min()) >= -1e-4 and float(m.nan_to_num(0.5).max()) <= 1 + 1e-4
    paired = perm != torch.arange(len(perm))  # a sample mixed with itself shows no mask
    assert int(paired.sum()) >= 4
    share = m.nan_to_num(0.0).flatten(1).sum(1) / (~m.isnan()).flatten(1).sum(1)
    torch.testing.assert_close(share[paired], lam[paired], atol=2e-3, rtol=0)
    assert step.batch.policy == method


def test_the_mix_block_reads_the_configured_stage_of_each_backbone():
    x = torch.randn(2, 3, 32, 32)

    # ResNet-18 (CIFAR stem): layer3's output, 256 channels at 8 x 8 (OpenMixup's mask_layer=2,
    # in_channels=256 of configs/classification/cifar100/automix/basic/r18_*.py).
    resnet = build_backbone("resnet18_cifar", 10, 32)
    learned = learned_for("automix", resnet, dataset="cifar100", size=32).eval()
    m = learned.encoder.module.model
    with torch.no_grad():
        expected = m.layer3(m.layer2(m.layer1(m.maxpool(m.act1(m.bn1(m.conv1(x)))))))
    torch.testing.assert_close(learned.features(x), expected)
    assert learned.mix_block.config.in_channels == 256

    # WRN-28-2: group 2 (mask_layer=1): 32 * 2 channels at 16 x 16.
    wrn = build_backbone("wrn28_2", 10, 32)
    learned = learned_for("samix", wrn, dataset="cifar100", size=32).eval()
    w = learned.encoder.module
    with torch.no_grad():
        expected = w.groups[1](w.groups[0](w.stem(x)))
    torch.testing.assert_close(learned.features(x), expected)
    assert learned.mix_block.config.in_channels == 64
    assert learned.settings.lr == 0.03 and learned.settings.sgd_momentum == 0.0  # WRN config
    assert learned.mix_block.config.value_hidden == 32  # SAMix's value net: half the features

    # DeiT: the patch tokens after block 6 of 12, as timm's own intermediate feature map.
    deit = build_backbone("deit_tiny_patch16_224", 10, 64)
    learned = learned_for("automix", deit, dataset="synthetic", size=64).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (expected,) = learned.encoder.module.model.forward_intermediates(
            image, indices=[5], output_fmt="NCHW", intermediates_only=True
        )
    torch.testing.assert_close(learned.features(image), expected)


@pytest.mark.parametrize("method", METHODS)
def test_steps_move_the_encoder_by_its_schedule_and_the_mix_block_by_its_own(method):
    # 64 images in batches of 32 for 10 epochs: 20 steps. OpenMixup's CosineScheduleHook
    # (adjust_scope [0.1, 1], constant warm-up): momentum 0.999 for steps 0 and 1 (below
    # int(0.1 * 20) = 2), then end - (end - base) * (cos(pi * s / 20) + 1) / 2 toward 0.999999.
    trial = build_trial(
        synthetic_trial(
            data={"synthetic_images": {"train": 64, "test": 32}},
            mixing={"method": method, "alpha": 2.0},
            epochs=10,
        )
    )
    learned = trial.learned
    assert learned is not None and learned.total_steps == 20
    base, end = 0.999, 0.999999
    momenta = [base, base, end - (end - base) * (math.cos(math.pi * 2 / 20) + 1) / 2]
    block_before = [p.detach().clone() for p in learned.mix_block.parameters()]
    images, labels = trial.train_set.read(torch.arange(32)), trial.train_set.labels[:32]
    for m in momenta:
        before = {n: p.detach().clone() for n, p in learned.encoder.module.named_parameters()}
        train_step(trial, images, labels)
        for name, p in trial.model.named_parameters():
            expected = before[name] * m + p.detach() * (1 - m)
            torch.testing.assert_close(
                learned.encoder.module.get_parameter(name), expected, rtol=0, atol=1e-6
            )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(block_before, learned.mix_block.parameters(), strict=True)
    )
    # The Mix Block's own cosine, from lr to min_lr over the trial's 20 steps: after 3.
    settings = learned.settings
    after_3 = (
        settings.min_lr + (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * 3 / 20)) / 2
    )
    assert learned.optimizer.param_groups[0]["lr"] == pytest.approx(after_3)


# A skipped first step makes torch warn that the schedule stepped before the optimiser: true.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_the_trials_grad_scaler_skips_a_mix_block_step_with_inf_gradients():
    # fp16 training shares one GradScaler between the two optimisers: inf in the Mix Block's
    # gradients skips its step (and halves the scale) but not the encoder's update.
    model, learned = learned_pair("samix")
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(torch.ones(()))  # the scale is made by the step's first scale()
    for p in learned.mix_block.parameters():
        p.grad = torch.ones_like(p)
    next(iter(learned.mix_block.parameters())).grad.view(-1)[0] = float("inf")
    block_before = [p.detach().clone() for p in learned.mix_block.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the backbone moved: the encoder must follow
    learned.step(scaler, model, 0)
    scaler.update()
    assert all(
        torch.equal(a, b) for a, b in zip(block_before, learned.mix_block.parameters(), strict=True)
    )
    assert scaler.get_scale() == 4.0
    encoder = dict(learned.encoder.module.named_parameters())
    assert any(not torch.equal(encoder[n], p - 1.0) for n, p in model.named_parameters())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("loss", EVERY_LOSS, ids=[loss["name"] for loss in EVERY_LOSS])
def test_trains_on_cifar10_with_each_loss(cifar10_jpg, method, loss):
    """Two steps of smallnet on real 32-pixel photos (OpenMixup's CIFAR settings)."""
    trial = cifar10_jpg_trial(cifar10_jpg, method, loss)
    final = run(trial, Recorder())
    assert 0 < final["train_loss"] < float("inf")


@pytest.mark.parametrize("method", METHODS)
def test_resumes_bitwise_with_its_mix_block_encoder_and_optimiser(tmp_path, method):
    torch.use_deterministic_algorithms(True)
    try:
        trial = synthetic_trial(
            data={"synthetic_images": {"train": 64, "test": 32}},
            mixing={"method": method, "alpha": 2.0},
            epochs=2,
            checkpoint_every=1,
        )
        whole, _, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=1)
    finally:
        torch.use_deterministic_algorithms(False)
    assert whole.metrics[1]["train_loss"] == resumed.metrics[0]["train_loss"]
    expected = load_checkpoint(whole.checkpoints[-1])
    got = load_checkpoint(resumed.checkpoints[-1])
    for part in ("model",):
        for key in expected[part]:
            assert torch.equal(expected[part][key], got[part][key]), key
    learned_expected, learned_got = expected["learned"], got["learned"]
    for key, value in learned_expected["modules"].items():
        assert torch.equal(value, learned_got["modules"][key]), key
    momenta = learned_expected["optimizer"]["state"], learned_got["optimizer"]["state"]
    for index, state in momenta[0].items():
        assert torch.equal(state["momentum_buffer"], momenta[1][index]["momentum_buffer"])
    assert learned_expected["scheduler"] == learned_got["scheduler"]


def test_samix_balance_is_samix_alone():
    model = build_backbone("smallnet", 5, 16)
    with pytest.raises(ValueError, match="samix_balance is SAMix's"):
        learned_for("automix", model, samix_balance=0.3)
    learned = learned_for("samix", model, samix_balance=0.3)
    assert learned.settings.samix_balance == 0.3
    assert default_settings("samix", "cifar100", 32).samix_balance == 0.5  # neg_weight=0.5
    assert default_settings("samix", "imagenet", 224).samix_balance == 1.0  # the default 1


def test_each_data_set_takes_its_openmixup_configs_settings():
    # (lr, min_lr, weight decay, end momentum, lambda embedding) of the Mix Block, as the configs
    # named in trainers/mixing/learned.py write them.
    def of(method: str, dataset: str, size: int):
        s = default_settings(method, dataset, size)
        return s.lr, s.min_lr, s.weight_decay, s.momentum.end, s.block.lam_concat

    assert of("automix", "cifar100", 32) == (0.1, 0.05, 1e-4, 0.999999, False)  # mlr5e_2
    assert of("automix", "tiny_imagenet", 64) == (0.1, 1e-3, 1e-4, 0.999999, False)  # mb_mlr1e_3
    assert of("automix", "imagenet", 224) == (0.1, 1e-3, 1e-4, 0.99999, True)  # lam_cat
    assert of("automix", "cub200", 224) == (0.01, 5e-4, 5e-4, 0.99999, True)  # mlr5e_4
    k = {d: default_settings("samix", d, 32).block.lam_mul_k for d in ("cifar100", "tiny_imagenet")}
    assert k == {"cifar100": 0.25, "tiny_imagenet": -1.0}
    assert default_settings("samix", "aircraft", 224).block.lam_mul_k == 1.0  # "mult + k=1"


# --------------------------------------------------------------------------- torch.distributed


def _two_rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        trial = build_trial(
            synthetic_trial(
                data={"synthetic_images": {"train": 64, "test": 32}},
                mixing={"method": "samix", "alpha": 2.0},
                batch_size=32,
                epochs=1,
            )
        )
        assert trial.learned is not None
        initial = {k: v.clone() for k, v in trial.learned.mix_block.state_dict().items()}
        # Each rank its own images: the Mix Block's gradients differ until averaged.
        for step in range(2):
            index = torch.arange(16) + 16 * (2 * step + rank)
            train_step(trial, trial.train_set.read(index), trial.train_set.labels[index])
        state = {
            "mix_block": {k: v.clone() for k, v in trial.learned.mix_block.state_dict().items()},
            "initial": initial,
            "encoder": {k: v.clone() for k, v in trial.learned.encoder.module.state_dict().items()},
            "model": {k: v.clone() for k, v in trial.model.state_dict().items()},
        }
        torch.save(state, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_one_mix_block(tmp_path):
    mp.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    moved = False
    for key, value in rank0["mix_block"].items():
        if "running" in key or "num_batches" in key:
            continue  # norms' statistics are each rank's until the epoch's end averages them
        assert torch.equal(value, rank1["mix_block"][key]), key
        moved |= not torch.equal(value, rank0["initial"][key])
    assert moved  # the Mix Block did train
    for key, value in rank0["encoder"].items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, rank1["encoder"][key]), key
    for key, value in rank0["model"].items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, rank1["model"][key]), key
