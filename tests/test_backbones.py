"""Backbones: the paper's networks build, the CIFAR variants have the right shape and size, the
ManifoldMix hook mixes where it says, and local weights load the way fine-tuning needs."""

from __future__ import annotations

import argparse
import copy
import re

import pytest
import timm
import torch
from torch import nn

from trainers.backbones import (
    DMSWEEP_BACKBONES,
    PAPER_TIMM_BACKBONES,
    StagedResNet,
    TimmBackbone,
    WideResNet,
    build_backbone,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def half_swap(features):
    """A real mix: each sample half its own, half its neighbour's."""
    return 0.5 * features + 0.5 * features.roll(1, dims=0)


# name, image size, batch, mix_stages
BUILDS = [
    ("resnet18_cifar", 32, 2, 3),
    ("resnext50_cifar", 32, 2, 3),
    ("wrn28_2", 32, 2, 3),
    ("wrn28_8", 32, 2, 3),
    ("smallnet", 32, 2, 3),
    ("resnet18", 64, 2, 3),
    ("resnet34", 64, 2, 3),
    ("resnet50", 64, 2, 3),
    ("resnext50_32x4d", 64, 2, 3),
    ("deit_small_patch16_224", 224, 1, 1),
    ("swin_tiny_patch4_window7_224", 224, 1, 1),
]


def test_the_table_covers_every_name():
    assert {name for name, *_ in BUILDS} == set(DMSWEEP_BACKBONES) | set(PAPER_TIMM_BACKBONES)


@pytest.mark.parametrize(("name", "size", "batch", "stages"), BUILDS)
def test_every_paper_backbone_gives_logits(name, size, batch, stages):
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=7, image_size=size).eval()
    assert model.mix_stages == stages
    with torch.no_grad():
        logits = model(torch.randn(batch, 3, size, size))
    assert logits.shape == (batch, 7) and torch.isfinite(logits).all()


def test_fixed_size_transformers_are_built_for_the_image_size():
    model = build_backbone("deit_small_patch16_224", 5, 96).eval()
    assert model.model.patch_embed.img_size == (96, 96)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5)


def test_cifar_stem_keeps_the_full_resolution_up_to_layer1():
    seen = {}
    for name in ("resnet18_cifar", "resnext50_cifar", "resnet18"):
        model = build_backbone(name, 100, 32).eval()
        conv = model.model.conv1
        model.model.layer1.register_forward_pre_hook(
            lambda _, args, name=name: seen.__setitem__(name, tuple(args[0].shape))
        )
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        if name.endswith("_cifar"):
            assert (conv.kernel_size, conv.stride, conv.out_channels) == ((3, 3), (1, 1), 64)
            assert isinstance(model.model.maxpool, nn.Identity)
    assert seen == {
        "resnet18_cifar": (2, 64, 32, 32),
        "resnext50_cifar": (2, 64, 32, 32),
        "resnet18": (2, 64, 8, 8),  # the ImageNet stem: 7x7 stride 2, then max-pool
    }
    # ResNeXt-50 32x4d: the first stage's grouped 3x3 conv has 32 groups of 4 channels.
    block = build_backbone("resnext50_cifar", 100, 32).model.layer1[0]
    assert (block.conv2.groups, block.conv2.out_channels) == (32, 128)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # Wide-ResNet paper (Zagoruyko & Komodakis, 2016) and FixMatch's WRN-28-2 / WRN-28-8
        (lambda: build_backbone("wrn28_2", 10, 32), 1.47e6),
        (lambda: build_backbone("wrn28_8", 100, 32), 23.4e6),
        (lambda: WideResNet(10, depth=28, widen_factor=10), 36.5e6),
        # the usual CIFAR ResNet-18 (e.g. kuangliu/pytorch-cifar) on CIFAR-100: 11,220,132
        (lambda: build_backbone("resnet18_cifar", 100, 32), 11.22e6),
        # torchvision's model table (ImageNet, 1000 classes)
        (lambda: build_backbone("resnet18", 1000, 224), 11.69e6),
        (lambda: build_backbone("resnext50_32x4d", 1000, 224), 25.03e6),
    ],
)
def test_parameter_counts_match_the_papers(build, expected):
    assert n_params(build()) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_the_staged_wrapper_gives_timms_own_logits(name):
    torch.manual_seed(0)
    model = build_backbone(name, 10, 64).eval()
    assert isinstance(model, StagedResNet)
    reference = timm.create_model(name, num_classes=10).eval()
    reference.load_state_dict(model.model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize(
    ("name", "size", "shapes"),
    [
        (
            "resnet18_cifar",
            32,
            [(2, 3, 32, 32), (2, 64, 32, 32), (2, 128, 16, 16)],
        ),
        (
            "resnext50_cifar",
            32,
            [(2, 3, 32, 32), (2, 256, 32, 32), (2, 512, 16, 16)],
        ),
        ("resnet18", 64, [(2, 3, 64, 64), (2, 64, 16, 16), (2, 128, 8, 8)]),
        ("wrn28_2", 32, [(2, 3, 32, 32), (2, 32, 32, 32), (2, 64, 16, 16)]),
        ("deit_small_patch16_224", 224, [(1, 3, 224, 224)]),
    ],
)
def test_identity_mix_at_every_stage_changes_nothing(name, size, shapes):
    torch.manual_seed(0)
    model = build_backbone(name, 10, size).eval()
    x = torch.randn(shapes[0][0], 3, size, size)
    seen = []

    def identity(features):
        seen.append(tuple(features.shape))
        return features

    with torch.no_grad():
        plain = model(x)
        for stage in range(model.mix_stages):
            torch.testing.assert_close(model(x, mix=identity, mix_stage=stage), plain)
    assert seen == shapes


@pytest.mark.parametrize(
    ("name", "size", "layer"),
    [("resnet18_cifar", 32, "layer2"), ("resnet50", 64, "layer2"), ("wrn28_2", 32, "groups.1")],
)
def test_a_real_mix_at_stage_2_mixes_that_stages_features(name, size, layer):
    torch.manual_seed(0)
    model = build_backbone(name, 10, size).eval()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        mixed = model(x, mix=half_swap, mix_stage=2)
        assert not torch.allclose(mixed, model(x), atol=1e-3)
        assert not torch.allclose(mixed, model(half_swap(x)), atol=1e-3)
        # Independent truth: the network's plain forward with a hook mixing that module's output.
        inner = model.model if isinstance(model, TimmBackbone) else model
        handle = inner.get_submodule(layer).register_forward_hook(lambda *a: half_swap(a[2]))
        expected = inner(x)
        handle.remove()
    torch.testing.assert_close(mixed, expected)


def test_mix_at_stage_0_mixes_the_input():
    model = build_backbone("swin_tiny_patch4_window7_224", 3, 224).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mix=half_swap), model.model(half_swap(x)))


@pytest.mark.parametrize(
    ("name", "size", "stage", "allowed"),
    [
        ("deit_small_patch16_224", 224, 1, "0"),
        ("resnet18_cifar", 32, 3, "0, 1, 2"),
        ("wrn28_2", 32, 3, "0, 1, 2"),
        ("smallnet", 32, -1, "0, 1, 2"),
    ],
)
def test_a_stage_the_network_lacks_is_rejected(name, size, stage, allowed):
    model = build_backbone(name, 10, size)
    message = f"mix_stage must be one of {allowed} for .*; got {stage}"
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, size, size), mix=half_swap, mix_stage=stage)


def test_wrn_dropout_is_an_option_and_off_by_default():
    x = torch.randn(2, 3, 32, 32)
    for drop_rate, same in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        model = build_backbone("wrn28_2", 10, 32, drop_rate=drop_rate).train()
        assert torch.equal(model(x), model(x)) is same


def test_backbones_run_under_ddp_and_deepcopy(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("resnet18_cifar", 10, 32)
    x = torch.randn(4, 3, 32, 32)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        logits = ddp(x, mix=half_swap, mix_stage=2)
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(ddp(x), model(x))
    finally:
        torch.distributed.destroy_process_group()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(ema(x, mix=half_swap, mix_stage=1), model(x, half_swap, 1))


# --- weights ---------------------------------------------------------------------------------


def timm_resnet18(num_classes=10):
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=num_classes).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the buffers matter too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_a_timm_state_dict_loads_into_the_wrapper(tmp_path):
    source = timm_resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = build_backbone("resnet18", 10, 64, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


@pytest.mark.parametrize("key", ["state_dict", "model", "state_dict_ema"])
def test_a_checkpoint_with_ddp_prefixes_loads(tmp_path, key):
    source = timm_resnet18()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({key: state, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, path)
    model = build_backbone("resnet18", 10, 64, weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_ema_weights_come_first_and_wrapper_checkpoints_load(tmp_path):
    ema, other = timm_resnet18(), timm.create_model("resnet18", num_classes=10)
    wrapped = {f"module.model.{k}": v for k, v in ema.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": other.state_dict(), "state_dict_ema": wrapped}, path)
    model = build_backbone("resnet18", 10, 64, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ema(x))


def test_another_num_classes_keeps_the_fresh_head_and_loads_the_rest(tmp_path):
    source = timm_resnet18(num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(3)
    fresh = build_backbone("resnet18", 200, 224)
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match=r"classifier.*fc.weight \(1000, 512\).*kept"):
        model = build_backbone("resnet18", 200, 224, weights=path)
    loaded, original = model.model.state_dict(), source.state_dict()
    for key, value in original.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (200, 512)
    assert torch.equal(loaded["fc.weight"], fresh.model.fc.weight)


def test_wide_resnet_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("wrn28_2", 10, 32).eval()
    path = tmp_path / "wrn.pth"
    torch.save(source.state_dict(), path)
    model = build_backbone("wrn28_2", 10, 32, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_backbone("resnet18", 10, 64, weights=path)


def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(f"could not read weights from {path}")):
        build_backbone("resnet18", 10, 64, weights=path)


def test_keys_that_do_not_fit_are_named(tmp_path):
    state = timm_resnet18().state_dict()
    state["stem.weight"] = state.pop("conv1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: conv1\.weight.*unexpected keys: stem"):
        build_backbone("resnet18", 10, 64, weights=path)
    # ImageNet weights do not fit the CIFAR stem: a 7x7 conv1 against a 3x3 one.
    torch.save(timm_resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"conv1\.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"):
        build_backbone("resnet18_cifar", 10, 32, weights=path)


def test_weights_and_pretrained_are_checked():
    with pytest.raises(ValueError, match=r"either weights .* or pretrained, not both"):
        build_backbone("resnet18", 10, 64, weights="w.pth", pretrained=True)
    with pytest.raises(ValueError, match="wrn28_8 has no downloadable weights"):
        build_backbone("wrn28_8", 10, 32, pretrained=True)


def test_an_unknown_name_lists_the_allowed_ones():
    message = (
        "unknown backbone 'resnet19': dmsweep builds resnet18_cifar, resnext50_cifar, wrn28_2, "
        "wrn28_8, smallnet; any other name must be a timm model name"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        build_backbone("resnet19", 10, 32)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        build_backbone("resnet18", 10, 0)
