"""The source head of a weights file (trainers/weights.py: read_source_head) for Co-Tuning:
torchvision-style, timm-style and .safetensors files written here, and the errors that name the
file and the first tensor that does not fit."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from trainers.backbones import SmallNet, build_backbone
from trainers.transfer.co_tuning import source_head_from_weights
from trainers.weights import read_source_head

SOURCE_CLASSES = 7  # stands in for ImageNet's 1000: the count is the file's, whatever it is


@pytest.fixture(scope="module")
def resnet_source() -> dict[str, torch.Tensor]:
    """A timm ResNet-18 with a 7-class head: the keys torchvision's resnet18 uses too."""
    torch.manual_seed(0)
    model = build_backbone("resnet18", num_classes=SOURCE_CLASSES, image_size=32)
    return {k: v.clone() for k, v in model.model.state_dict().items()}


@pytest.fixture(scope="module")
def resnet_target() -> nn.Module:
    return build_backbone("resnet18", num_classes=3, image_size=32)


def test_torchvision_style_file(
    tmp_path: Path, resnet_source: dict[str, torch.Tensor], resnet_target: nn.Module
) -> None:
    # torchvision's files: a plain state dict without batch norm's num_batches_tracked.
    state = {k: v for k, v in resnet_source.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(state, path)
    weight, bias = read_source_head(resnet_target, path)
    assert torch.equal(weight, resnet_source["fc.weight"])
    assert bias is not None and torch.equal(bias, resnet_source["fc.bias"])
    assert weight.shape == (SOURCE_CLASSES, 512)


def test_timm_style_checkpoint(
    tmp_path: Path, resnet_source: dict[str, torch.Tensor], resnet_target: nn.Module
) -> None:
    # timm's train.py checkpoint: metadata, the weights, the EMA weights (preferred), DDP prefix.
    ema = {f"module.{k}": v + 1 for k, v in resnet_source.items()}
    # (The non-EMA entry is cut to one tensor to keep the file small: it must not be read.)
    plain = {"fc.weight": torch.zeros(1)}
    checkpoint = {"arch": "resnet18", "epoch": 3, "state_dict": plain, "state_dict_ema": ema}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    weight, bias = read_source_head(resnet_target, path)
    assert torch.equal(weight, resnet_source["fc.weight"] + 1)
    assert bias is not None and torch.equal(bias, resnet_source["fc.bias"] + 1)


def test_safetensors_of_a_wrapped_model(tmp_path: Path) -> None:
    # dmsweep's wrappers save their timm model under "model."; SmallNet's head is "head".
    torch.manual_seed(0)
    source = SmallNet(num_classes=SOURCE_CLASSES, width=4)
    wrapped = {f"model.{k}": v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / "smallnet.safetensors"
    save_file(wrapped, str(path))
    head = source_head_from_weights(SmallNet(num_classes=3, width=4), path)
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (16, SOURCE_CLASSES)
    assert torch.equal(head.weight, source.head.weight)
    assert torch.equal(head.bias, source.head.bias)


def test_the_target_backbone_still_loads_the_same_file(tmp_path: Path) -> None:
    # Co-Tuning's two reads of one file: the body into the target model (head dropped with a
    # warning), the head into the algorithm.
    torch.manual_seed(0)
    source = SmallNet(num_classes=SOURCE_CLASSES, width=4)
    path = tmp_path / "smallnet.pt"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        target = build_backbone("smallnet", num_classes=3, image_size=32, width=4, weights=path)
    assert torch.equal(target.stages[0][0].weight, source.stages[0][0].weight)
    head = source_head_from_weights(target, path)
    assert torch.equal(head.weight, source.head.weight)


def smallnet_file(tmp_path: Path, change: dict[str, torch.Tensor | None]) -> Path:
    """A SmallNet state dict with entries replaced (a tensor) or removed (None)."""
    state = SmallNet(num_classes=SOURCE_CLASSES, width=4).state_dict()
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return path


def test_no_source_head_is_named(tmp_path: Path) -> None:
    path = smallnet_file(tmp_path, {"head.weight": None, "head.bias": None})
    with pytest.raises(ValueError, match=r"weights\.pt have no source head: no head\.weight"):
        read_source_head(SmallNet(num_classes=3, width=4), path)


def test_a_head_on_other_features_is_refused(tmp_path: Path) -> None:
    path = smallnet_file(tmp_path, {"head.weight": torch.zeros(SOURCE_CLASSES, 32)})
    with pytest.raises(ValueError, match=r"weights\.pt: the source head head\.weight \(7, 32\)"):
        read_source_head(SmallNet(num_classes=3, width=4), path)


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"stages.1.0.weight": torch.zeros(8, 4, 1, 1)},
            r"stages\.1\.0\.weight: file \(8, 4, 1, 1\)",
        ),
        ({"stages.2.1.running_var": None}, r"stages\.2\.1\.running_var: file missing"),
        ({"stem.weight": torch.zeros(1)}, r"stem\.weight: in the file, not in the backbone"),
    ],
)
def test_first_mismatching_tensor_is_named(
    tmp_path: Path, change: dict[str, torch.Tensor | None], named: str
) -> None:
    path = smallnet_file(tmp_path, change)
    with pytest.raises(ValueError, match=rf"weights\.pt do not fit SmallNet: .*{named}"):
        read_source_head(SmallNet(num_classes=3, width=4), path)


def test_bias_of_another_size_is_refused(tmp_path: Path) -> None:
    path = smallnet_file(tmp_path, {"head.bias": torch.zeros(SOURCE_CLASSES + 1)})
    with pytest.raises(ValueError, match=r"head\.bias \(8,\) does not fit"):
        read_source_head(SmallNet(num_classes=3, width=4), path)


def test_a_file_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"head.weight": torch.zeros(2, 16), "net": nn.Linear(1, 1)}, path)
    with pytest.raises(ValueError, match="could not read weights"):
        read_source_head(SmallNet(num_classes=3, width=4), path)
