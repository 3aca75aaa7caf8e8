"""CUDA paths: the same invariants on the device, without host synchronisation.

Marked ``gpu``: ``make test`` deselects these, ``make test-gpu`` runs them on a CUDA machine.
"""

from __future__ import annotations

import pytest
import torch

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
    from test_loop import Recorder, synthetic_trial

    from trainers.loop import run

    recorder = Recorder()
    final = run(synthetic_trial(device="cuda", epochs=2), recorder)
    assert [m["epoch"] for m in recorder.metrics] == [1, 2]
    assert final["val_top1"] > 30


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
