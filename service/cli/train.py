"""``dmsweep train``: one trial in this process, with a progress bar, no Ray.

The same loop the sweep engine runs in its trials' processes, with ``report`` printing progress and,
when asked, keeping each checkpoint and the per-epoch metrics in a folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trainers.config import load_train_config
from trainers.loop import run

METRICS_FILE = "metrics.jsonl"


def epoch_progress(console: Console, label: str) -> Progress:
    """A progress bar over epochs with a free text field ``last`` for the latest metrics."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=console,
    )


def train_in_process(
    trial_file: Path, *, out: Path | None, resume: Path | None, console: Console
) -> dict[str, float]:
    """Train the trial in ``trial_file``; return its final metrics."""
    config = load_train_config(trial_file)
    if resume is not None and not resume.is_dir():
        raise ValueError(f"--resume {resume}: not a checkpoint folder")
    epochs = config.epochs_to_train()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"{config.data.name} / {config.backbone.name} / {config.mixing.method} / "
        f"{config.loss.name}, recipe {config.recipe}, seed {config.seed}"
    )
    with epoch_progress(console, "epoch") as progress:
        task = progress.add_task("", total=epochs, last="")

        def report(metrics: dict[str, float], checkpoint: str | None) -> None:
            if out is not None:
                with (out / METRICS_FILE).open("a") as lines:
                    lines.write(json.dumps(metrics) + "\n")
                if checkpoint is not None:
                    target = out / f"checkpoint_{int(metrics['epoch']):04d}"
                    shutil.copytree(checkpoint, target, dirs_exist_ok=True)
            progress.update(
                task,
                completed=metrics["epoch"],
                last=f"loss {metrics['train_loss']:.3f}, top-1 {metrics['val_top1']:.1f}%",
            )

        return run(config, report, resume_from=resume)
