"""Images per second of the training step on this machine: what ``dmsweep calibrate`` measures.

``measure`` builds a trial as the loop does (``trainers.loop.build_trial``) on synthetic images of
the asked size, already in memory, and times real steps of ``trainers.loop.train_step``
(augmentation on the device, mixing, loss, backward, optimiser step, EMA where the recipe keeps
one) after warm-up steps. ``measure_together`` runs several such trials at once on one device,
each in its own process, as Ray packs trials with a fractional ``gpus_per_worker``.

Not measured: decoding and per-sample augmentation in DataLoader workers (photos, RandAugment),
the evaluation after each epoch, checkpoints, and gradient all-reduce between workers.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import torch

from trainers.config import TrainConfig
from trainers.loop import build_trial, train_step
from trainers.machine import cpu_model

# Images per class do not matter for speed; enough classes for a realistic classifier head.
CALIBRATION_CLASSES = 100


@dataclass(frozen=True)
class Throughput:
    """One measurement: images/s of one trial's training step."""

    images_per_s: float
    device: str  # the device's name: the GPU's, or the CPU's model and threads
    kind: str  # "cpu" or "cuda"
    amp: bool  # mixed precision (the recipe asks and the device is a GPU)
    steps: int
    batch_size: int


def device_name(device: torch.device) -> str:
    """How a calibration table names ``device``: the GPU's name, or the CPU's and its threads.

    A CPU's speed depends on the threads torch uses, so they are part of its name.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({torch.get_num_threads()} threads)"


def calibration_config(
    backbone: str, image_size: int, batch_size: int, recipe: str, device: str
) -> TrainConfig:
    """The trial ``measure`` times: one batch of synthetic images, Mixup, the recipe's loss.

    The recipe's optimiser, EMA and mixed precision are kept; RandAugment (a per-sample PIL
    operation in DataLoader workers) is left out and random weights replace pretrained ones
    (the same work per step).
    """
    from trainers.recipes import get_recipe

    overrides = {"randaugment": None, "pretrained_init": False}
    bce = get_recipe(recipe, overrides).bce
    return TrainConfig.model_validate(
        {
            "data": {
                "name": "synthetic",
                "num_classes": CALIBRATION_CLASSES,
                "image_size": image_size,
                "synthetic_images": {"train": batch_size, "test": 2},
                "loader_workers": 0,
            },
            "backbone": {"name": backbone},
            "mixing": {"method": "mixup", "alpha": 1.0},
            "loss": {"name": "mbce" if bce else "mce"},
            "recipe": recipe,
            "recipe_overrides": overrides,
            "batch_size": batch_size,
            "device": device,
        }
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    backbone: str,
    image_size: int,
    batch_size: int,
    *,
    steps: int = 10,
    warmup: int = 3,
    recipe: str = "cifar",
    device: str = "auto",
    barrier: Any = None,
) -> Throughput:
    """Images/s of ``steps`` training steps of one trial, timed after ``warmup`` steps.

    ``barrier`` (a multiprocessing Barrier): wait on it between warm-up and timing, so that
    trials measured together (``measure_together``) time the same stretch.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0; got {steps}, {warmup}")
    trial = build_trial(calibration_config(backbone, image_size, batch_size, recipe, device))
    index = torch.arange(batch_size)
    images, labels = trial.train_set.read(index), trial.train_set.labels[index]
    trial.train_model.train()
    target = trial.ranks.device
    for _ in range(warmup):
        train_step(trial, images, labels)
    _sync(target)
    if barrier is not None:
        barrier.wait()
    started = time.perf_counter()
    for _ in range(steps):
        train_step(trial, images, labels)
    _sync(target)
    elapsed = time.perf_counter() - started
    return Throughput(
        images_per_s=steps * batch_size / elapsed,
        device=device_name(target),
        kind=target.type,
        amp=trial.amp,
        steps=steps,
        batch_size=batch_size,
    )


def _measure_in_child(queue: Any, barrier: Any, threads: int, options: dict[str, Any]) -> None:
    """One of ``measure_together``'s processes: its measurement, or its error, on ``queue``."""
    if threads:
        torch.set_num_threads(threads)
    try:
        queue.put(measure(**options, barrier=barrier))
    except BaseException as error:
        barrier.abort()  # the others must not wait for this one
        queue.put(RuntimeError(f"{type(error).__name__}: {error}"))


def measure_together(count: int, timeout_s: float = 1800, **options: Any) -> list[Throughput]:
    """``measure`` in ``count`` processes at once on the same device; one result per process.

    Each process is a trial as Ray runs them, with ``gpus_per_worker = 1 / count``; on the CPU
    each gets an equal share of this process's threads. ``count`` 1 measures in this process.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    if count == 1:
        return [measure(**options)]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    queue = context.Queue()
    barrier = context.Barrier(count)
    threads = max(1, torch.get_num_threads() // count) if options.get("device") != "cuda" else 0
    children = [
        context.Process(target=_measure_in_child, args=(queue, barrier, threads, options))
        for _ in range(count)
    ]
    for child in children:
        child.start()
    try:
        results = [queue.get(timeout=timeout_s) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise RuntimeError(f"a packed trial failed: {errors[0]}")
    return results
