"""Time of each mixing policy as a share of one ResNet-18 training step on the same batch.

    python bench/mixing.py [--threads 1] [--rounds 9] [--system-malloc] [--quick]
        [--puzzlemix-workers 0]

Batches: 128 x 3 x 32 x 32 (CIFAR-size, 100 classes) and 64 x 3 x 224 x 224 (ImageNet-size,
1000 classes); the step is forward, backward and SGD step of timm's resnet18 (ImageNet stem, so
at 32 px it is cheaper than the paper's CIFAR ResNet-18 and the ratio errs on the high side).
Target (issue 2): every static policy at most 0.05 of the step.

PuzzleMix (dynamic, issue 16) has two parts, timed apart (one call per round, as they are
slow): its saliency pass (``input_saliency``: an eval-mode forward and an input-gradient
backward of the same resnet18) and its masks (``puzzlemix`` on a fixed saliency: the graph cuts
on the CPU, ``--puzzlemix-workers`` processes, then the transport), for each grid size of
OpenMixup's settings; the pass plus the mean over grid sizes (each batch draws one uniformly)
is its cost. It has no target: the paper counts it among the costly dynamic methods.

AutoMix and SAMix (dynamic, issue 16) learn their masks beside the backbone: a step of theirs
(``LearnedMixing``: the momentum encoder's features, two masks of the Mix Block, the encoder's
forward and backward on the Mix Block's batch, the backbone on its mixed and its clean batch,
the Mix Block's SGD step and the encoder's EMA) is timed whole, on the same resnet18, and their
cost is what it adds to the plain step.
``--quick``: the CIFAR-size batch only, at most 3 rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import dataclasses
import statistics
from collections.abc import Callable

import torch
from _timing import devices, median_seconds, setup
from resnet_step import resnet18, resnet18_step_seconds
from rich.console import Console
from rich.table import Table

from trainers.backbones import StagedResNet
from trainers.mixing import POLICIES
from trainers.mixing.learned import LEARNED_POLICIES, LearnedMixing
from trainers.mixing.methods import input_saliency
from trainers.mixing.puzzlemix import default_settings, puzzlemix
from trainers.objectives import objective

BATCHES = [(128, 32, 100), (64, 224, 1000)]  # (N, image size, classes)
MASKS = "puzzlemix masks, grid"
mce = objective("mce")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CIFAR-size batch only, 3 rounds")
    parser.add_argument(
        "--puzzlemix-workers", type=int, default=0, help="graph-cut processes (0: in process)"
    )


def puzzlemix_calls(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    generator: torch.Generator,
    workers: int,
) -> dict[str, Callable[[], object]]:
    """PuzzleMix's parts: the saliency pass of a resnet18, and the masks on each grid size.

    A batch draws its grid uniformly from the settings' sizes, and the graph cuts' cost grows
    with the grid: each size is timed on its own, and the policy's cost is their mean.
    """
    model = resnet18(num_classes, images.device)
    saliency = input_saliency(model, images, labels)
    settings = default_settings(images.shape[-1])
    calls: dict[str, Callable[[], object]] = {
        "puzzlemix saliency pass": lambda: input_saliency(model, images, labels)
    }
    for grid in settings.grids:
        one_grid = dataclasses.replace(settings, grids=(grid,))
        calls[f"{MASKS} {grid}x{grid}"] = lambda s=one_grid: puzzlemix(
            images, labels, saliency, alpha=1.0, generator=generator, settings=s, workers=workers
        )
    return calls


def learned_step(
    method: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> Callable[[], object]:
    """One training step of ``method`` (AutoMix or SAMix) on a resnet18, MCE as the objective."""
    model = StagedResNet(resnet18(num_classes, images.device))
    learned = LearnedMixing(
        method,
        model,
        dataset="synthetic",  # by image size: CIFAR's settings at 32 px, ImageNet's at 224
        image_size=images.shape[-1],
        alpha=2.0,
        lambda_mode="batch",
        total_steps=1000,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(images.device.type, enabled=False)
    generator = torch.Generator(device=images.device).manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        mixed = learned.mixing(model, images, labels, generator, mce)
        (mce(mixed.logits, mixed.batch) + mixed.auxiliary).backward()
        optimizer.step()
        learned.step(scaler, model, 0)

    return step


def main() -> None:
    args = setup(
        "Mixing policies vs one ResNet-18 step",
        __doc__.split("\n")[0],
        rounds=9,
        options=_options,
    )
    rounds = min(args.rounds, 3) if args.quick else args.rounds
    console = Console()
    for device in devices(args.device):
        table = Table(title=device.type)
        for column in ("batch", "policy", "ms / batch", "share of step", "target 0.05"):
            table.add_column(column, justify="right")
        for n, size, num_classes in BATCHES[:1] if args.quick else BATCHES:
            generator = torch.Generator(device=device).manual_seed(0)
            images = torch.randn(n, 3, size, size, device=device, generator=generator)
            labels = torch.randint(num_classes, (n,), device=device, generator=generator)
            calls = {
                name: (
                    lambda p=policy, x=images, y=labels, g=generator: p(
                        x, y, alpha=1.0, generator=g
                    )
                )
                for name, policy in POLICIES.items()
            }
            times = median_seconds(calls, device, rounds=rounds, calls_per_round=3)
            dynamic = median_seconds(
                puzzlemix_calls(images, labels, num_classes, generator, args.puzzlemix_workers),
                device,
                rounds=rounds,
                calls_per_round=1,
                warmup=1,
            )
            step = resnet18_step_seconds(images, labels, num_classes)
            learned = median_seconds(
                {
                    f"{method} (added to the step)": learned_step(
                        method, images, labels, num_classes
                    )
                    for method in LEARNED_POLICIES
                },
                device,
                rounds=rounds,
                calls_per_round=1,
                warmup=1,
            )
            dynamic.update({name: seconds - step for name, seconds in learned.items()})
            batch = f"{n}x3x{size}x{size}"
            for name, seconds in times.items():
                share = seconds / step
                verdict = "[green]ok[/]" if share <= 0.05 else "[red]over[/]"
                table.add_row(batch, name, f"{seconds * 1e3:.2f}", f"{share:.4f}", verdict)
            masks = [seconds for name, seconds in dynamic.items() if name.startswith(MASKS)]
            dynamic["puzzlemix (pass + mean mask)"] = dynamic[
                "puzzlemix saliency pass"
            ] + statistics.mean(masks)
            for name, seconds in dynamic.items():
                share = seconds / step
                table.add_row(batch, name, f"{seconds * 1e3:.1f}", f"{share:.3f}", "dynamic")
            table.add_row(batch, "resnet18 step", f"{step * 1e3:.0f}", "1", "")
            table.add_section()
        console.print(table)


if __name__ == "__main__":
    main()
