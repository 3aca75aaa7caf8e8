"""PuzzleMix as a trial's method: the saliency pass on the model, and the loop with each loss.

The saliency is checked against a gradient written out here with plain autograd on a copy of
the network; the loop trains on the shared CIFAR-10 JPEGs and resumes bitwise. Nothing is
mocked. (Two ranks: ``tests/test_loop.py``.)
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tests.support.training import (
    EVERY_LOSS,
    Recorder,
    cifar10_jpg_trial,
    synthetic_trial,
    whole_interrupted_resumed,
)
from trainers.loop import load_checkpoint, run
from trainers.mixing.methods import MethodMixer, input_saliency
from trainers.mixing.puzzlemix import CIFAR_MEAN_STD, puzzlemix

torch.set_num_threads(1)

MEAN, STD = CIFAR_MEAN_STD


def tiny_network(seed: int = 0) -> nn.Module:
    """A conv net with batch norm (running statistics set far from a batch's own) and dropout.

    Both behave differently in train and eval mode, so a saliency taken in the wrong mode
    would differ from the eval-mode gradient.
    """
    torch.manual_seed(seed)
    network = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
    )
    norm = network[1]
    assert isinstance(norm, nn.BatchNorm2d)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.num_batches_tracked.fill_(7)
    return network


def batch(n: int = 6, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, size, size, generator=generator)
    return inputs, torch.randint(5, (n,), generator=generator)


def expected_saliency(network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    """d CE / d inputs of an eval-mode copy, by ``backward()``; its RMS over channels.

    The CE summed over the batch: each image's gradient is that of its own loss.
    """
    probe = copy.deepcopy(network).eval()
    leaf = inputs.clone().requires_grad_(True)
    F.cross_entropy(probe(leaf), targets, reduction="sum").backward()
    assert leaf.grad is not None
    return leaf.grad.pow(2).mean(dim=1).sqrt()


def test_saliency_is_the_eval_mode_input_gradient_and_leaves_the_network_as_it_was():
    network = tiny_network().train()
    network[3].eval()  # a module the caller keeps in eval mode must stay so
    modes = [m.training for m in network.modules()]
    buffers = {k: v.clone() for k, v in network.state_dict().items()}
    inputs, targets = batch()

    saliency = input_saliency(network, inputs, targets)

    torch.testing.assert_close(saliency, expected_saliency(network, inputs, targets))
    assert saliency.shape == (6, 32, 32) and not saliency.requires_grad
    assert all(p.grad is None for p in network.parameters())
    assert [m.training for m in network.modules()] == modes
    for key, value in network.state_dict().items():  # BN running statistics included
        assert torch.equal(value, buffers[key]), key
    # In train mode the gradient differs (batch statistics, dropout): the check above has teeth.
    leaf = inputs.clone().requires_grad_(True)
    F.cross_entropy(copy.deepcopy(network).train()(leaf), targets, reduction="sum").backward()
    assert leaf.grad is not None
    assert not torch.allclose(leaf.grad.pow(2).mean(dim=1).sqrt(), saliency)


def test_saliency_works_under_no_grad_and_on_an_eval_model():
    network = tiny_network().eval()
    inputs, targets = batch()
    with torch.no_grad():
        saliency = input_saliency(network, inputs, targets)
    torch.testing.assert_close(saliency, expected_saliency(network, inputs, targets))
    assert not any(m.training for m in network.modules())


def test_saliency_bypasses_the_ddp_wrapper(tmp_path):
    """Under DistributedDataParallel the pass runs on the network inside: the wrapper's forward
    (its buffer broadcast and reducer) is never called. One rank, in this process."""
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        network = tiny_network().train()
        wrapped = nn.parallel.DistributedDataParallel(network)
        calls: list[int] = []
        wrapped.register_forward_pre_hook(lambda module, args: calls.append(1))
        inputs, targets = batch()
        saliency = input_saliency(wrapped, inputs, targets)
        assert calls == []
        torch.testing.assert_close(saliency, expected_saliency(network, inputs, targets))
        assert all(m.training for m in wrapped.modules())
        assert all(p.grad is None for p in network.parameters())
    finally:
        dist.destroy_process_group()


def test_the_mixer_mixes_by_the_current_models_saliency():
    """MethodMixer's PuzzleMix batch is ``puzzlemix`` of the hand-made saliency, same draws."""
    network = tiny_network().train()
    inputs, targets = batch()
    # Taken first: the mixer's training forward on the mixed batch moves the BN statistics.
    saliency = expected_saliency(network, inputs, targets)
    mixer = MethodMixer("puzzlemix", 1.5, mean=MEAN, std=STD)
    generator = torch.Generator().manual_seed(3)
    logits, mixed = mixer(network, inputs, targets, generator, torch.Generator().manual_seed(4))

    expected = puzzlemix(
        inputs,
        targets,
        saliency,
        alpha=1.5,
        generator=torch.Generator().manual_seed(3),
        mean=MEAN,
        std=STD,
    )
    assert mixed.policy == "puzzlemix"
    torch.testing.assert_close(mixed.inputs, expected.inputs)
    torch.testing.assert_close(mixed.lam, expected.lam)
    assert torch.equal(mixed.perm, expected.perm)
    assert torch.equal(mixed.y_b, targets[expected.perm])
    assert logits.shape == (6, 5) and logits.requires_grad
    assert all(p.grad is None for p in network.parameters())
    assert all(m.training for m in network.modules())


def test_puzzlemix_needs_the_normalisation():
    with pytest.raises(ValueError, match="mean and std"):
        MethodMixer("puzzlemix", 1.0)


@pytest.mark.parametrize("loss", EVERY_LOSS, ids=[loss["name"] for loss in EVERY_LOSS])
def test_puzzlemix_trains_on_cifar10_with_each_loss(cifar10_jpg, loss):
    """Two steps of smallnet on real 32-pixel photos (OpenMixup's CIFAR settings)."""
    trial = cifar10_jpg_trial(cifar10_jpg, "puzzlemix", loss)
    recorder = Recorder()
    final = run(trial, recorder)
    assert [m["epoch"] for m in recorder.metrics] == [1]
    assert 0 < final["train_loss"] < float("inf")


def test_puzzlemix_resumes_bitwise(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        trial = synthetic_trial(
            data={"synthetic_images": {"train": 64, "test": 32}},
            mixing={"method": "puzzlemix", "alpha": 1.0},
            epochs=2,
            checkpoint_every=1,
        )
        whole, _, resumed = whole_interrupted_resumed(trial, tmp_path, stop_after=1)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [m["epoch"] for m in resumed.metrics] == [2]
    assert whole.metrics[1]["train_loss"] == resumed.metrics[0]["train_loss"]
    expected = load_checkpoint(whole.checkpoints[-1])["model"]
    got = load_checkpoint(resumed.checkpoints[-1])["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_graph_cuts_in_a_process_pool_train_the_same_weights(tmp_path):
    """The labellings are solved by two processes or in the trial's own: the same run."""
    from trainers.mixing.graph_cut import _pool

    pools_before = _pool.cache_info().misses + _pool.cache_info().hits
    torch.use_deterministic_algorithms(True)
    try:
        states = []
        for workers in (0, 2):
            recorder = Recorder(keep=tmp_path / str(workers))
            trial = synthetic_trial(
                data={"synthetic_images": {"train": 64, "test": 32}},
                mixing={"method": "puzzlemix", "alpha": 1.0, "puzzlemix_workers": workers},
                epochs=1,
                checkpoint_every=1,
            )
            run(trial, recorder)
            states.append(load_checkpoint(recorder.checkpoints[-1])["model"])
    finally:
        torch.use_deterministic_algorithms(False)
    assert _pool.cache_info().misses + _pool.cache_info().hits > pools_before  # the pool ran
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
