"""AutoMix's Mix Block, SAMix's Mixer and the momentum encoder: masks, gradient flow, schedule.

Tiny shapes only (8 channels, 2 x 2 features, 8 x 8 images); every expected number is worked
out by hand in the test that uses it.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from trainers import losses
from trainers.mixing.mix_block import (
    AUTOMIX_R18,
    SAMIX_R18,
    MixBlock,
    MixBlockConfig,
    MomentumEncoder,
    MomentumSchedule,
    automix_batches,
    mask_regulariser,
    mix_block_loss,
    rescale_lambda_mul,
    samix_balanced_loss,
)

torch.set_num_threads(1)

C, N, CLASSES = 8, 4, 5
CONFIGS = {
    "automix": MixBlockConfig(in_channels=C, init_std=1.0),
    "samix": MixBlockConfig(
        in_channels=C,
        init_std=1.0,
        upsampling=SAMIX_R18.upsampling,
        lam_mul=SAMIX_R18.lam_mul,
        lam_mul_k=SAMIX_R18.lam_mul_k,
        lam_residual=SAMIX_R18.lam_residual,
        value_hidden=4,
        x_qk_concat=SAMIX_R18.x_qk_concat,
        mask_loss_mode=SAMIX_R18.mask_loss_mode,
    ),
}


class TinyNet(nn.Module):
    """A two-stage classifier: ``stage`` gives the Mix Block's features (C x 2 x 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, C, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Linear(C, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x).mean((2, 3)))


def setup(name: str, seed: int = 0) -> tuple[MixBlock, TinyNet, MomentumEncoder]:
    torch.manual_seed(seed)
    net = TinyNet()
    return MixBlock(CONFIGS[name]), net, MomentumEncoder(net)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])


def step(name: str, seed: int = 0, lambda_mode: str = "sample"):
    block, net, ema = setup(name)
    x, y = batch()
    features = ema.module.stage(x)
    mixed = automix_batches(
        block,
        features,
        x,
        y,
        generator=torch.Generator().manual_seed(seed),
        lambda_mode=lambda_mode,  # type: ignore[arg-type]
    )
    return block, net, ema, x, y, mixed


def test_defaults_are_the_cifar_r18_configs() -> None:
    assert (AUTOMIX_R18.in_channels, AUTOMIX_R18.reduction, AUTOMIX_R18.upsampling) == (
        256,
        2,
        "nearest",
    )
    assert (AUTOMIX_R18.mask_loss_mode, AUTOMIX_R18.mask_loss_margin) == ("L1", 0.1)
    assert (AUTOMIX_R18.mask_loss_weight, AUTOMIX_R18.lam_margin) == (0.1, 0.08)
    assert not (AUTOMIX_R18.lam_concat or AUTOMIX_R18.lam_mul or AUTOMIX_R18.x_qk_concat)
    assert (SAMIX_R18.upsampling, SAMIX_R18.value_hidden, SAMIX_R18.lam_mul_k) == (
        "bilinear",
        128,
        0.25,
    )
    assert SAMIX_R18.x_qk_concat and SAMIX_R18.lam_residual
    assert SAMIX_R18.mask_loss_mode == "L1+Variance"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mask_in_unit_interval_and_lambda_is_its_share(name: str) -> None:
    block, _, ema, x, y, _ = step(name)
    # Image n is the constant n: a mixed pixel m * n + (1 - m) * perm[n] gives back m exactly.
    labelled = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1).expand(N, 3, 8, 8)
    mixed = automix_batches(
        block,
        ema.module.stage(x),  # features of real images, so the mask is not flat
        labelled.contiguous(),
        y,
        generator=torch.Generator().manual_seed(0),
        lambda_mode="sample",
    )
    mask = mixed.mix_block_mask.detach()
    assert mask.shape == (N, 1, 8, 8)
    assert bool((mask >= 0).all() and (mask <= 1).all())
    assert float(mask.std()) > 1e-3  # a real mask, not the constant 1/2 of a tiny init
    b = mixed.backbone
    assert torch.equal(b.y_a, y) and torch.equal(b.y_b, y[b.perm])
    assert b.lam.dtype == torch.float32 and b.policy == "automix"
    for n in range(N):
        partner = int(b.perm[n])
        if partner == n:
            continue
        recovered = (b.inputs[n] - partner) / (n - partner)  # the a side's weight per pixel
        assert float(recovered.min()) >= -1e-6 and float(recovered.max()) <= 1 + 1e-6
        assert recovered.mean().item() == pytest.approx(float(b.lam[n]), abs=1e-5)
    # The Mix Block's batch is mixed with its own mask, the same way.
    for n in range(N):
        partner = int(mixed.mix_block_perm[n])
        if partner != n:
            recovered = (mixed.mix_block_inputs[n, 0].detach() - partner) / (n - partner)
            torch.testing.assert_close(recovered, mask[n, 0])


def test_mask_at_feature_resolution_then_upsampled() -> None:
    block = MixBlock(CONFIGS["automix"])
    z = torch.randn(2, C, 2, 2, generator=torch.Generator().manual_seed(3))
    mask = block(z, z.flip(0), torch.tensor([0.3, 0.6]), (8, 8))
    # nearest: each feature cell covers a 4 x 4 block of the image.
    assert torch.equal(mask, mask[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_lam_margin_gives_plain_mixup() -> None:
    # lambda 0.05 <= 0.08: the backbone batch is mixed with the constant lambda.
    block, _, ema, x, y, _ = step("automix")
    cfg = block.config
    assert cfg.lam_margin == 0.08
    z = ema.module.stage(x)
    found = False
    for seed in range(200):  # find a draw with a lambda in the margin (Beta(2, 2): ~3 %)
        mixed = automix_batches(
            block, z, x, y, generator=torch.Generator().manual_seed(seed), lambda_mode="sample"
        )
        drawn = mixed.backbone_drawn_lam
        plain = (drawn <= 0.08) | (drawn >= 0.92)
        if plain.any():
            found = True
            torch.testing.assert_close(mixed.backbone.lam[plain], drawn[plain])
            break
    assert found


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_backbone_loss_gives_no_gradient_to_mix_block(name: str) -> None:
    block, net, _, _, _, mixed = step(name)
    b = mixed.backbone
    loss = losses.mce(net(b.inputs), b.y_a, b.y_b, b.lam)
    assert not b.inputs.requires_grad  # the mask was detached: no path to the Mix Block
    loss.backward()
    assert all(p.grad is None for p in block.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mix_block_loss_trains_mix_block_only(name: str) -> None:
    block, net, ema, _, _, mixed = step(name)
    logits = ema(mixed.mix_block_inputs)
    balance = 0.5 if name == "samix" else None
    y = torch.tensor([0, 1, 2, 3])
    loss = mix_block_loss(
        logits,
        y,
        y[mixed.mix_block_perm],
        mixed.mix_block_lam,
        mixed.mix_block_mask,
        block.config,
        samix_balance=balance,
    )
    loss.backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is None for p in ema.parameters())


def test_momentum_schedule_by_hand() -> None:
    s = MomentumSchedule()
    assert (s.base, s.end, s.start_fraction) == (0.999, 0.999999, 0.1)
    assert s(0, 100) == 0.999 and s(9, 100) == 0.999  # constant before 10 %
    # step 10 of 100: cos(0.1 pi) = 0.9510565163; 0.999999 - 0.000999 * 0.97552825815
    assert s(10, 100) == pytest.approx(0.99902444727, abs=1e-11)
    assert s(50, 100) == pytest.approx(0.9994995, abs=1e-12)  # cos = 0: halfway
    assert s(100, 100) == pytest.approx(0.999999, abs=1e-12)  # cos(pi) = -1: the end


def test_momentum_encoder_ema_step_by_hand() -> None:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
    ema = MomentumEncoder(model)
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.bias.fill_(2.0)
    m = ema.update(model, step=0, total_steps=100)
    assert m == 0.999
    # 0.999 * 1 + 0.001 * 3 = 1.002; 0.999 * -2 + 0.001 * 2 = -1.996
    assert ema.module.weight.item() == pytest.approx(1.002, abs=1e-6)
    assert ema.module.bias.item() == pytest.approx(-1.996, abs=1e-6)
    assert model.weight.item() == 3.0  # the online model is untouched


def test_rescale_lambda_mul_by_hand() -> None:
    lam = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    # k = 0.25, K = 1.25: r(1/4) = (1/48 - 1/8 + 5/16) / (7/12) = (5/24) / (7/12) = 5/14
    expected = torch.tensor([0.0, 5 / 14, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(rescale_lambda_mul(lam, 0.25), expected)
    assert torch.equal(rescale_lambda_mul(lam, -1), lam)


def test_mask_regulariser_by_hand() -> None:
    half = torch.full((2, 1, 4, 4), 0.5)
    lam = torch.tensor([0.8, 0.8])
    # |0.5 - 0.8| - 0.1 = 0.2
    assert mask_regulariser(half, lam, AUTOMIX_R18).item() == pytest.approx(0.2)
    assert mask_regulariser(half, torch.tensor([0.55, 0.55])).item() == 0.0  # within margin
    split = torch.zeros(2, 1, 4, 4)
    split[:, :, :, :2] = 1.0  # share 1/2, variance 1/4: 0 - 2 * 1/4
    assert mask_regulariser(split, torch.tensor([0.5, 0.5]), SAMIX_R18).item() == pytest.approx(
        -0.5
    )
    # Per-sample lambdas: shares 0.2 and 0.8 against 0.8 and 0.2 miss by 0.6 each, 0.5 past
    # the margin; the two gaps must not cancel.
    shares = torch.stack((torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.8)))
    lam = torch.tensor([0.8, 0.2])
    assert mask_regulariser(shares, lam, AUTOMIX_R18).item() == pytest.approx(0.5)


def test_samix_balanced_loss() -> None:
    z = torch.zeros(1, 3)
    ya, yb, lam = torch.tensor([0]), torch.tensor([1]), torch.tensor([0.75])
    # sigmoid: every class costs log 2 at z = 0; weights 1, 1, 0.5 -> 2.5 log 2
    got = samix_balanced_loss(z, ya, yb, lam, samix_balance=0.5, kind="sigmoid")
    assert got.item() == pytest.approx(2.5 * math.log(2))
    # softmax (the CIFAR config): the weight falls on zero labels, so the loss is MCE.
    g = torch.Generator().manual_seed(5)
    z = torch.randn(N, CLASSES, generator=g)
    ya, yb = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 4, 0])
    lam = torch.tensor([0.2, 0.5, 0.7, 0.9])
    for balance in (0.0, 0.5, 1.0):
        got = samix_balanced_loss(z, ya, yb, lam, samix_balance=balance)
        torch.testing.assert_close(got, losses.mce(z, ya, yb, lam))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_deterministic_with_seeded_generator(name: str) -> None:
    first = step(name, seed=7)[-1]
    second = step(name, seed=7)[-1]
    other = step(name, seed=8)[-1]
    assert torch.equal(first.mix_block_inputs, second.mix_block_inputs)
    assert torch.equal(first.backbone.inputs, second.backbone.inputs)
    assert torch.equal(first.backbone.lam, second.backbone.lam)
    assert not torch.equal(first.backbone.inputs, other.backbone.inputs)


def test_batch_mode_draws_one_lambda() -> None:
    mixed = step("automix", lambda_mode="batch")[-1]
    assert bool((mixed.mix_block_lam == mixed.mix_block_lam[0]).all())
    assert bool((mixed.backbone_drawn_lam == mixed.backbone_drawn_lam[0]).all())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_round_trip(name: str) -> None:
    block, net, ema, _, _, _ = step(name)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, 50, 100)
    buffer = io.BytesIO()
    torch.save({"block": block.state_dict(), "ema": ema.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    block2, _, ema2 = setup(name, seed=123)
    block2.load_state_dict(saved["block"])
    ema2.load_state_dict(saved["ema"])
    for a, b in zip(block.state_dict().values(), block2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Same state, same masks: bitwise.
    z = torch.randn(2, C, 2, 2, generator=torch.Generator().manual_seed(9))
    lam = torch.tensor([0.4, 0.6])
    assert torch.equal(block(z, z.flip(0), lam, (8, 8)), block2(z, z.flip(0), lam, (8, 8)))
    assert not any(p.requires_grad for p in ema2.parameters())


def test_constant_value_gives_constant_mask_by_hand() -> None:
    # Each row of the attention sums to 1, so a value map constant at log 3 gives
    # m_b = sigmoid(log 3) = 3/4 everywhere, and the a side 1/4, whatever q and k are.
    block = MixBlock(CONFIGS["automix"])
    assert isinstance(block.value, nn.Conv2d)
    with torch.no_grad():
        block.value.weight.zero_()
        block.value.bias.fill_(math.log(3))
    z = torch.randn(2, C, 2, 2, generator=torch.Generator().manual_seed(4))
    mask = block(z, z.flip(0), torch.tensor([0.3, 0.6]), (8, 8))
    torch.testing.assert_close(mask, torch.full((2, 1, 8, 8), 0.25))
