"""How the pseudo-labelling algorithms run the model on a step's labelled and unlabelled images.

TorchSSL (the paper's codebase, Sec. 4.4) runs FixMatch, FlexMatch and UDA on one concatenated
batch, so batch norm normalises labelled and unlabelled images together
(models/fixmatch/fixmatch.py: ``torch.cat((x_lb, x_ulb_w, x_ulb_s))``); Pseudo-Label runs the
unlabelled batch separately with the running statistics frozen, so only the labelled batch
updates them (models/pseudolabel/pseudolabel.py, ``Bn_Controller`` in train_utils.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def joint_logits(model: nn.Module, *inputs: Tensor) -> tuple[Tensor, ...]:
    """One forward of the concatenated ``inputs``; the logits split back, one per input."""
    logits = model(torch.cat(inputs))
    return tuple(logits.split([len(part) for part in inputs]))


@contextmanager
def running_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Batch norm inside normalises by batch statistics but leaves its running ones as found.

    The running mean, variance and batch count of every batch-norm layer are restored on exit,
    TorchSSL's ``Bn_Controller.freeze_bn`` / ``unfreeze_bn`` (train_utils.py): the unlabelled
    forward of Pseudo-Label then does not shift the statistics used at evaluation.
    """
    saved = [
        (module, {name: buffer.clone() for name, buffer in module.named_buffers(recurse=False)})
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        for module, buffers in saved:
            for name, value in buffers.items():
                # Through ``.data``, which has its own version counter: the forwards' graphs
                # saved these buffers for batch norm's backward, and a tracked in-place write
                # would make that backward refuse to run.
                getattr(module, name).data.copy_(value)
