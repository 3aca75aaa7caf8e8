"""CUDA paths: the same invariants on the device, without host synchronisation.

Marked ``gpu``: ``make test`` deselects these, ``make test-gpu`` runs them on a CUDA machine.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.dm_reference import textbook_dm_ce
from tests.support.training import Recorder, synthetic_trial, whole_interrupted_resumed
from trainers import losses
from trainers.mixing import INTERPOLATION_BASED, POLICIES

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    return torch.device("cuda")


@pytest.fixture
def no_host_sync():
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


def _batch(device, n=64, c=1000, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(n, c, device=device, generator=g) * 5).requires_grad_(True)
    a = torch.randint(c, (n,), device=device, generator=g)
    b = torch.randint(c, (n,), device=device, generator=g)
    b[::4] = a[::4]
    lam = torch.rand(n, device=device, generator=g)
    return logits, a, b, lam


@pytest.mark.parametrize("name", ["mce", "dm_ce", "mbce", "dm_bce"])
def test_losses_on_cuda_match_cpu(cuda, name):
    logits, a, b, lam = _batch(cuda)
    call = {
        "mce": lambda z, a, b, lam: losses.mce(z, a, b, lam),
        "dm_ce": lambda z, a, b, lam: losses.dm_ce(z, a, b, lam, eta=0.5),
        "mbce": lambda z, a, b, lam: losses.mbce(z, a, b, lam),
        "dm_bce": lambda z, a, b, lam: losses.dm_bce(z, a, b, lam, xi=0.8, t=1.0),
    }[name]
    on_gpu = call(logits, a, b, lam)
    on_gpu.backward()
    cpu_logits = logits.detach().cpu().requires_grad_(True)
    on_cpu = call(cpu_logits, a.cpu(), b.cpu(), lam.cpu())
    on_cpu.backward()
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.cpu(), cpu_logits.grad, rtol=1e-4, atol=1e-7)


def test_losses_do_not_synchronise(cuda, no_host_sync):
    logits, a, b, lam = _batch(cuda)
    total = (
        losses.mce(logits, a, b, lam)
        + losses.dm_ce(logits, a, b, lam, eta=0.1)
        + losses.mbce(logits, a, b, lam)
        + losses.dm_bce(logits, a, b, lam, xi=0.8, t=1.0)
    )
    total.backward()


def test_dm_ce_under_bf16_autocast_on_cuda(cuda):
    layer = torch.nn.Linear(64, 1000).to(cuda)
    x = torch.randn(32, 64, device=cuda) * 100
    a, b = torch.randint(1000, (32,), device=cuda), torch.randint(1000, (32,), device=cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = losses.dm_ce(layer(x), a, b, torch.rand(32, device=cuda), eta=1.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_on_cuda_keep_lambda_true_without_sync(cuda, name):
    n = 32
    inputs = torch.arange(n, device=cuda, dtype=torch.float32).view(n, 1, 1, 1)
    inputs = inputs.expand(n, 3, 32, 32).contiguous()
    targets = torch.arange(n, device=cuda)
    generator = torch.Generator(device=cuda).manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = POLICIES[name](inputs, targets, alpha=1.0, generator=generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.inputs.device.type == "cuda" and batch.lam.device.type == "cuda"
    value_a = batch.y_a.float().view(n, 1, 1, 1)
    value_b = batch.y_b.float().view(n, 1, 1, 1)
    if name in INTERPOLATION_BASED:
        lam = batch.lam.view(n, 1, 1, 1)
        torch.testing.assert_close(
            batch.inputs, (lam * value_a + (1 - lam) * value_b).expand_as(inputs)
        )
        return
    from_a = torch.isclose(batch.inputs, value_a.expand_as(inputs), atol=1e-4)
    from_b = torch.isclose(batch.inputs, value_b.expand_as(inputs), atol=1e-4)
    assert (from_a | from_b).all()
    distinct = batch.perm != torch.arange(n, device=cuda)
    share = from_a.float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(share[distinct], batch.lam[distinct], atol=1e-6, rtol=0)


def test_policies_reject_a_cpu_generator_for_a_cuda_batch(cuda):
    inputs = torch.rand(4, 3, 8, 8, device=cuda)
    with pytest.raises(ValueError, match="generator is on cpu but the batch is on cuda"):
        POLICIES["cutmix"](
            inputs, torch.arange(4, device=cuda), alpha=1.0, generator=torch.Generator()
        )


def test_the_training_loop_runs_on_cuda(cuda):
    from trainers.loop import run

    recorder = Recorder()
    final = run(synthetic_trial(device="cuda", epochs=2), recorder)
    assert [m["epoch"] for m in recorder.metrics] == [1, 2]
    assert final["val_top1"] > 30
    # The figure a user picks resources.gpus_per_worker by: more than nothing, less than the GPU.
    total_gib = torch.cuda.get_device_properties(cuda).total_memory / 2**30
    assert 0 < final["gpu_memory_peak_gib"] < total_gib


@pytest.mark.parametrize("recipe", ["cifar", "deit"])
def test_train_augment_on_cuda_is_reproducible(cuda, recipe):
    from trainers.augment import TrainAugment, mean_std
    from trainers.recipes import get_recipe

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device=cuda)
    augment = TrainAugment(get_recipe(recipe), 32, *mean_std("cifar10"))
    first = augment(images, torch.Generator(device=cuda).manual_seed(0))
    again = augment(images, torch.Generator(device=cuda).manual_seed(0))
    assert first.device.type == "cuda" and first.dtype == torch.float32
    torch.testing.assert_close(first, again)


# --------------------------------------------------------------------------- losses, in depth


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("per_sample", [True, False])
def test_dm_ce_on_cuda_matches_cpu_and_the_textbook_form_in_float64(cuda, scale, per_sample):
    logits, a, b, lam = _batch(cuda, n=48, c=100, seed=1)
    z = (logits.detach().double() * scale / 5).requires_grad_(True)
    lam = lam.double() if per_sample else 0.3
    on_gpu = losses.dm_ce(z, a, b, lam, eta=0.7)
    (grad_gpu,) = torch.autograd.grad(on_gpu, z)
    assert on_gpu.dtype == grad_gpu.dtype == torch.float64

    z_cpu = z.detach().cpu().requires_grad_(True)
    lam_cpu = lam.cpu() if per_sample else lam
    on_cpu = losses.dm_ce(z_cpu, a.cpu(), b.cpu(), lam_cpu, eta=0.7)
    (grad_cpu,) = torch.autograd.grad(on_cpu, z_cpu)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_gpu.cpu(), grad_cpu, rtol=1e-10, atol=1e-14)

    z_ref = z.detach().clone().requires_grad_(True)
    lam_ref = lam if per_sample else torch.full((48,), lam, dtype=torch.float64, device=cuda)
    reference = textbook_dm_ce(z_ref, a, b, lam_ref, 0.7)
    (grad_ref,) = torch.autograd.grad(reference, z_ref)
    torch.testing.assert_close(on_gpu, reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_gpu, grad_ref, rtol=1e-8, atol=1e-12)


def test_dm_ce_gradcheck_on_cuda(cuda):
    logits, a, b, lam = _batch(cuda, n=6, c=7, seed=2)
    z = logits.detach().double().requires_grad_(True)
    lam = lam.double()
    assert torch.autograd.gradcheck(lambda z: losses.dm_ce(z, a, b, lam, eta=0.4), (z,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_on_half_precision_cuda_logits(cuda, dtype):
    logits, a, b, lam = _batch(cuda, n=64, c=1000, seed=3)
    half = logits.detach().to(dtype).requires_grad_(True)
    full = half.detach().float().requires_grad_(True)
    for call in (
        lambda z: losses.mce(z, a, b, lam),
        lambda z: losses.dm_ce(z, a, b, lam, eta=1.0),
        lambda z: losses.dm_bce(z, a, b, lam, xi=0.8, t=1.0),
    ):
        half.grad = full.grad = None
        loss_half, loss_full = call(half), call(full)
        loss_half.backward()
        loss_full.backward()
        # Computed in float32 from the same (rounded) logits: the same loss, a rounded gradient.
        assert loss_half.dtype == torch.float32 and half.grad.dtype == dtype
        torch.testing.assert_close(loss_half, loss_full)
        assert torch.isfinite(half.grad).all()
        torch.testing.assert_close(half.grad.float(), full.grad, rtol=1e-2, atol=1e-4)


def test_dm_ce_under_fp16_autocast_with_a_grad_scaler(cuda):
    layer = torch.nn.Linear(64, 1000).to(cuda)
    x = torch.randn(32, 64, device=cuda) * 100  # logits far beyond fp16's exp range
    a, b = torch.randint(1000, (32,), device=cuda), torch.randint(1000, (32,), device=cuda)
    lam = torch.rand(32, device=cuda)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        logits = layer(x)
        loss = losses.dm_ce(logits, a, b, lam, eta=1.0)
    assert logits.dtype == torch.float16 and loss.dtype == torch.float32
    logits.retain_grad()
    # The layer's own fp16 backward may overflow at this scale (the scaler's business); the
    # loss's gradient, scaled by 2 ** 16, must not.
    scaler.scale(loss).backward()
    assert torch.isfinite(loss) and logits.grad.dtype == torch.float16
    assert torch.isfinite(logits.grad).all()
    full = logits.detach().float().requires_grad_(True)
    (expected,) = torch.autograd.grad(losses.dm_ce(full, a, b, lam, eta=1.0), full)
    torch.testing.assert_close(
        logits.grad.float() / scaler.get_scale(), expected, rtol=1e-2, atol=1e-6
    )


# --------------------------------------------------------------------------- mixing, in depth


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_on_cuda_are_reproducible_and_true_on_non_square_images(name):
    device = torch.device("cuda", 0)  # an explicit index, as torch.distributed ranks use
    n, height, width = 16, 24, 40
    inputs = torch.arange(n, device=device, dtype=torch.float32).view(n, 1, 1, 1)
    inputs = inputs.expand(n, 3, height, width).contiguous()
    targets = torch.arange(n, device=device)

    def draw(seed):
        generator = torch.Generator(device=device).manual_seed(seed)
        return POLICIES[name](inputs, targets, alpha=0.5, generator=generator)

    first, again, other = draw(7), draw(7), draw(8)
    for field in ("inputs", "y_a", "y_b", "lam", "perm"):
        torch.testing.assert_close(getattr(first, field), getattr(again, field))
    assert not torch.equal(first.lam, other.lam)
    assert first.lam.dtype == torch.float32 and first.lam.device == device
    assert ((first.lam >= 0) & (first.lam <= 1)).all()
    torch.testing.assert_close(first.y_b, targets[first.perm])
    if name in INTERPOLATION_BASED:
        return
    value_a = first.y_a.float().view(n, 1, 1, 1).expand_as(inputs)
    from_a = torch.isclose(first.inputs, value_a, atol=1e-4)
    distinct = first.perm != torch.arange(n, device=device)
    share = from_a.float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(share[distinct], first.lam[distinct], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the training loop


@pytest.mark.parametrize(
    "method", ["cutmix", "mixup", "fmix", "saliencymix", "manifoldmix", "automix", "samix"]
)
def test_a_training_step_on_cuda_does_not_synchronise(cuda, method):
    from trainers.loop import build_trial, train_step

    trial = build_trial(synthetic_trial(device="cuda", mixing={"method": method, "alpha": 1.0}))
    index = torch.arange(32)
    images = trial.train_set.read(index).to(cuda)
    labels = trial.train_set.labels[index].to(cuda)
    train_step(trial, images, labels)  # warm-up: lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses_seen = [train_step(trial, images, labels) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses_seen)).all()


def test_amp_training_on_cuda_resumes_from_its_checkpoint(tmp_path):
    from trainers.loop import load_checkpoint

    trial = synthetic_trial(device="cuda", epochs=3, recipe_overrides={"amp": True})
    whole, interrupted, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=2)
    final = resumed.metrics[-1]

    assert [m["epoch"] for m in resumed.metrics] == [3]
    for metrics in (*whole.metrics, *resumed.metrics):
        assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert final["val_top1"] > 30  # chance is 20%
    state = load_checkpoint(interrupted.checkpoints[-1])
    assert state["scaler"]["scale"] > 0  # the fp16 loss scale travels with the checkpoint
    # The first two epochs replay exactly the same draws; CUDA kernels may sum in another
    # order, so the resumed epoch matches the uninterrupted one closely, not bitwise.
    for a, b in zip(whole.metrics[:2], interrupted.metrics, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert resumed.metrics[0]["train_loss"] == pytest.approx(
        whole.metrics[2]["train_loss"], rel=1e-2
    )
    expected = load_checkpoint(whole.checkpoints[-1])["model"]
    got = load_checkpoint(resumed.checkpoints[-1])["model"]
    diffs = {
        key: (expected[key].float() - got[key].float()).abs().max().item()
        for key in expected
        if expected[key].is_floating_point()
    }
    assert max(diffs.values()) < 1e-3, diffs


@pytest.mark.parametrize("method", ["automix", "samix"])
def test_the_learned_policies_train_under_fp16_with_one_grad_scaler(method):
    # Two optimisers share the trial's GradScaler: a step with inf gradients is skipped for both.
    from trainers.loop import run

    trial = synthetic_trial(
        device="cuda",
        mixing={"method": method, "alpha": 2.0},
        recipe_overrides={"amp": True},
        epochs=2,
    )
    final = run(trial, Recorder())
    assert torch.isfinite(torch.tensor(final["train_loss"])) and final["train_loss"] > 0


@pytest.mark.parametrize(
    ("recipe", "loss"),
    [
        ("deit", {"name": "dm_ce", "eta": 0.1}),
        ("rsb_a3", {"name": "dm_bce", "eta": None, "xi": 0.8, "t": 1.0}),
    ],
)
def test_the_paper_recipes_train_on_cuda(recipe, loss):
    # DeiT: RandAugment round trip through the CPU, random erasing, EMA, Mixup/CutMix switching.
    # RSB A3: repeated augmentation, LAMB, BCE, fp16 autocast with a grad scaler.
    from trainers.loop import run

    trial = synthetic_trial(
        device="cuda",
        recipe=recipe,
        loss=loss,
        mixing={"method": "mixup_cutmix", "alpha": 1.0},
        recipe_overrides={"drop_path": 0.0},  # smallnet has no stochastic depth
        epochs=1,
        eval={"fgsm": True},
    )
    recorder = Recorder()
    final = run(trial, recorder)
    assert torch.isfinite(torch.tensor(final["train_loss"])) and final["train_loss"] > 0
    assert 0 <= final["val_top1"] <= final["val_top5"] <= 100
    assert 0 <= final["fgsm_error"] <= 100
