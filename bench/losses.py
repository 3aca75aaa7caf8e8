"""Forward + backward time of the DM losses next to the losses they extend, measured together.

    python bench/losses.py [--threads 1] [--rounds 15] [--system-malloc] [--device cuda]

Prints, per device and class count (N = 256): milliseconds per step of each loss, the ratio
dm_ce / mce and dm_bce / mbce, a textbook dm_ce (two masked logsumexps, autograd backward) for
comparison, and each loss as a share of one ResNet-18 training step on a 256 x 3 x 32 x 32 batch.
Targets (issue 2, C = 1000): dm_ce <= 2x mce; loss <= 1% of the ResNet-18 step.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# `python bench/<name>.py` puts only bench/ on sys.path; tests.support lives in the repo root.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch
from _timing import devices, median_seconds, setup
from resnet_step import resnet18_step_seconds
from rich.console import Console
from rich.table import Table

from tests.support.dm_reference import textbook_dm_ce
from trainers import losses

BATCH = 256


def loss_steps(num_classes: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(BATCH, num_classes, device=device, generator=g).requires_grad_(True)
    y_a = torch.randint(num_classes, (BATCH,), device=device, generator=g)
    y_b = torch.randint(num_classes, (BATCH,), device=device, generator=g)
    lam = torch.rand(BATCH, device=device, generator=g)
    calls = {
        "mce": lambda: losses.mce(logits, y_a, y_b, lam),
        "dm_ce": lambda: losses.dm_ce(logits, y_a, y_b, lam, eta=0.1),
        "dm_ce (textbook)": lambda: textbook_dm_ce(logits, y_a, y_b, lam, 0.1),
        "mbce": lambda: losses.mbce(logits, y_a, y_b, lam),
        "dm_bce": lambda: losses.dm_bce(logits, y_a, y_b, lam, xi=0.8, t=1.0),
    }

    def step(loss_fn):
        def run():
            logits.grad = None
            loss_fn().backward()

        return run

    return {name: step(fn) for name, fn in calls.items()}


def main() -> None:
    args = setup(f"Loss forward+backward, N={BATCH}", __doc__.split("\n")[0], rounds=15)
    console = Console()
    baselines = {"dm_ce": "mce", "dm_ce (textbook)": "mce", "dm_bce": "mbce"}
    for device in devices(args.device):
        table = Table(title=f"{device.type}")
        for column in ("C", "loss", "ms / step", "ratio", "vs", "% of ResNet-18 step"):
            table.add_column(column, justify="right")
        for num_classes in (100, 1000):
            steps = loss_steps(num_classes, device)
            times = median_seconds(steps, device, rounds=args.rounds, calls_per_round=20)
            images = torch.randn(BATCH, 3, 32, 32, device=device)
            labels = torch.randint(num_classes, (BATCH,), device=device)
            step_time = resnet18_step_seconds(images, labels, num_classes)
            for name, seconds in times.items():
                base = baselines.get(name)
                table.add_row(
                    str(num_classes),
                    name,
                    f"{seconds * 1e3:.3f}",
                    f"{seconds / times[base]:.2f}x" if base else "",
                    base or "",
                    f"{100 * seconds / step_time:.2f}%",
                )
            table.add_row(str(num_classes), "resnet18 step", f"{step_time * 1e3:.1f}", "", "", "")
            table.add_section()
        console.print(table)


if __name__ == "__main__":
    main()
