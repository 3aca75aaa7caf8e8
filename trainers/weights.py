"""Weights from a local file: read without unpickling, loaded into a backbone, its source head.

``read_state_dict`` reads a plain state dict, a timm training checkpoint or ``.safetensors``
(``torch.load`` with ``weights_only=True``: a pickle that builds anything but tensors is
refused); ``load_weights`` loads it into a backbone of ``trainers.backbones``, keeping a fresh
classifier where the file's does not fit; ``read_source_head`` returns the file's classifier
for Co-Tuning. Nothing here downloads.
"""

from __future__ import annotations

import argparse
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a weights file, read without unpickling anything.

    ``.safetensors`` files are read by safetensors; any other file by ``torch.load`` with
    ``weights_only=True``, which refuses a pickle that builds other objects than tensors and
    containers (a file made to run code on load is refused, not run). A checkpoint dict gives
    its first of ``CHECKPOINT_KEYS``; DDP's ``module.`` prefix is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_safetensors(str(path), device="cpu")
        else:
            # timm's training checkpoints keep their arguments as an argparse.Namespace: a
            # plain record, the one class besides tensors and containers let through.
            with torch.serialization.safe_globals([argparse.Namespace]):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which is what must never happen.
        raise ValueError(
            f"could not read weights from {path}: it holds objects other than tensors, and "
            "weights are read as tensors only (save model.state_dict() with torch.save, or "
            "as .safetensors)"
        ) from None
    except Exception as error:
        raise ValueError(f"could not read weights from {path}: {error}") from error
    if isinstance(loaded, Mapping):
        key = next((k for k in CHECKPOINT_KEYS if loaded.get(k) is not None), None)
        state = loaded[key] if key is not None else loaded
    else:
        state = loaded
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "classifier_name", None)
    if names is None:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = (names,) if isinstance(names, str) else tuple(names or ())
    return tuple(f"{name}." for name in names)


def _few(keys: list[str], limit: int = 5) -> str:
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _file_state(model: nn.Module, path: Path) -> tuple[nn.Module, dict[str, Tensor]]:
    """The network weights load into (the timm model of a wrapper), and the file's tensors.

    A file saved from this module's wrappers has every key under ``model.``; that prefix is
    stripped when the network's own keys lack it.
    """
    # Here rather than at the top: trainers.backbones imports this module to load weights.
    from trainers.backbones import TimmBackbone

    target = model.model if isinstance(model, TimmBackbone) else model
    state = read_state_dict(path)
    if all(k.startswith("model.") for k in state) and not any(
        k.startswith("model.") for k in target.state_dict()
    ):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return target, state


def read_source_head(
    model: nn.Module, path: str | os.PathLike[str]
) -> tuple[Tensor, Tensor | None]:
    """The pretrained classifier of a weights file: its weight (C_s, D) and bias (C_s,) or None.

    What Co-Tuning (:mod:`trainers.transfer.co_tuning`) keeps as its source head, while
    ``load_weights`` drops it for a head of the target's classes. ``model`` is the backbone as
    built for the target task (any number of classes); its classifier's name says which
    entries of the file are the head (``fc.weight`` / ``fc.bias`` for ResNets, torchvision's
    and timm's alike; ``head.*`` for DeiT, ``head.fc.*`` for Swin), read as in
    ``load_weights`` (any file ``read_state_dict`` reads; ``module.`` and ``model.``
    prefixes stripped). Where timm names two classifiers (DeiT's distilled head), the first
    is taken: our choice.

    A ValueError, naming the file, when the file has no such head (a headless backbone file),
    when the head is not a linear layer on the backbone's D features, or when any other tensor
    does not fit the backbone (the first mismatching one, in the backbone's order, is named):
    weights that do not fit would give the source head meaningless features.
    """
    path = Path(path)
    target, state = _file_state(model, path)
    prefixes = _classifier_prefixes(target)
    if not prefixes:
        raise ValueError(f"cannot tell the classifier of {type(target).__name__}: no source head")
    name = prefixes[0].removesuffix(".")
    weight, bias = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if weight is None:
        heads = ", ".join(sorted(k for k in state if k.startswith(prefixes[0]))) or "none"
        raise ValueError(
            f"weights {path} have no source head: no {name}.weight (entries under {name}.: "
            f"{heads}); Co-Tuning needs the pretrained classifier, which this file lacks"
        )
    expected = target.state_dict()
    features = expected[f"{name}.weight"].shape[1:]
    if weight.dim() != 2 or weight.shape[1:] != features:
        raise ValueError(
            f"weights {path}: the source head {name}.weight {tuple(weight.shape)} is not a "
            f"linear layer on this backbone's {tuple(features)} features"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(
            f"weights {path}: the source head's {name}.bias {tuple(bias.shape)} does not fit "
            f"its weight {tuple(weight.shape)}"
        )
    for key, tensor in expected.items():
        if key.startswith(prefixes):
            continue  # the target head: its size is the target's, not the file's
        found = state.get(key)
        if found is None and key.endswith("num_batches_tracked"):
            continue  # torchvision's files lack it; load_weights lets batch norm fill it in
        if found is None or found.shape != tensor.shape:
            got = "missing" if found is None else f"{tuple(found.shape)}"
            raise ValueError(
                f"weights {path} do not fit {type(target).__name__}: first mismatching tensor "
                f"{key}: file {got}, backbone {tuple(tensor.shape)}"
            )
    extra = [k for k in state if k not in expected and not k.startswith(prefixes)]
    if extra:
        raise ValueError(
            f"weights {path} do not fit {type(target).__name__}: first mismatching tensor "
            f"{extra[0]}: in the file, not in the backbone"
        )
    return weight, bias


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state dict or checkpoint into a backbone built by ``build_backbone``.

    The file holds a plain state dict or a timm-style checkpoint dict (``state_dict_ema``,
    ``model_ema``, ``state_dict`` or ``model``, EMA weights first); prefixes of DDP
    (``module.``) and of this module's wrappers (``model.``) are stripped. Keys are those of
    the timm model (or of the dmsweep network). When the file's classifier does not fit
    ``num_classes``, everything else is loaded and the fresh classifier kept, with a warning:
    the way fine-grained recipes start from ImageNet weights. Any other missing, unexpected or
    mis-shaped key is a ValueError.
    """
    path = Path(path)
    target, state = _file_state(model, path)
    expected = target.state_dict()

    head = _classifier_prefixes(target)
    file_head = sorted(k for k in state if k.startswith(head)) if head else []
    model_head = sorted(k for k in expected if k.startswith(head)) if head else []
    fresh_head = file_head != model_head or any(
        state[k].shape != expected[k].shape for k in model_head
    )
    if fresh_head:
        shapes = [f"{k} {tuple(state.pop(k).shape)}" for k in file_head]
        fresh = [f"{k} {tuple(expected[k].shape)}" for k in model_head]
        warnings.warn(
            f"{path}: the classifier does not fit this model (file: {', '.join(shapes) or '-'}; "
            f"model: {', '.join(fresh) or '-'}); loaded everything else and kept the freshly "
            "initialised classifier",
            stacklevel=2,
        )

    body = set(expected) - set(model_head) if fresh_head else set(expected)
    # BatchNorm fills in num_batches_tracked itself (torchvision's files lack it).
    missing = sorted(k for k in body - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {_few(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (file vs model)", mismatched),
            )
            if keys
        ]
        raise ValueError(
            f"weights {path} do not fit {type(target).__name__}; " + "; ".join(problems)
        )
    target.load_state_dict(state, strict=not fresh_head)
