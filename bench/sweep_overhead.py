"""What a sweep trial costs beyond its training steps, through the engine and without it.

    python bench/sweep_overhead.py [--quick] [--trials 3] [--cell-seconds 35] [--cell-images N]
        [--cell-cpus 2] [--no-cells]

1. Per-trial overhead of trivial cells (synthetic 16 px, 32 train / 16 test images, smallnet,
   1 epoch, 1 CPU per trial, one trial at a time): seconds per trial through the engine
   (``service.sweep.engine.run_sweep``: a one-worker trial trains in its Tune function's own
   process, kept for the next trial; MLflow tracking on SQLite, trial records and logs,
   checkpoints kept in the trial's folder, the report at the end) against a plain Ray Tune
   function trial calling ``trainers.loop.run`` on the same ``TrainConfig`` and reporting with
   ``ray.tune.report`` (checkpoint included, no MLflow), with Tune's defaults (a new process per
   trial) and with ``reuse_actors=True`` as the engine has it.
   A trial's time is from Tune's ``on_trial_start`` to its ``on_trial_complete`` in the sweep's
   driver; "sweep / trial" is the whole ``run_sweep`` (or ``Tuner.fit``) call divided by the
   number of trials, and "outside trials" what that call spends outside the trials (the sweep's
   own start and end: MLflow parent run, report; Tune's gaps between trials).
2. Cells of about a minute (synthetic 32 px, smallnet, 3 epochs, the training set sized by a
   short calibration so that the training steps take ``--cell-seconds``): the fraction of each
   trial's wall time (Tune's start to end) spent in training steps, the sum of the loop's
   ``epoch_time_s`` read from the trial's log (evaluation, checkpoints and data generation are
   outside it). Two trials, one after the other, through the engine.

Each configuration runs in a child process of this script (``--_child``) that starts its own
local Ray with ``ray.init()`` and shuts it down; the parent prints the tables. Other work on
the machine moves these numbers: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

# `python bench/<name>.py` puts only bench/ on sys.path; tests.support lives in the repo root.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from tests.support import REPO
from tests.support.processes import end_session

RESULT = "SWEEP_OVERHEAD_RESULT "
CELL_EPOCHS = 3
CELL_BATCH = 64  # the smoke recipe's
LOG_STAMP = "%Y-%m-%d %H:%M:%S"
EPOCH_LINE = re.compile(r"^\S+ \S+ epoch (\d+): .*epoch_time_s ([0-9.eE+-]+)")


# --- specs -------------------------------------------------------------------------------------


def _spec(name: str, seeds: int, epochs: int, images: dict[str, Any], cpus: float) -> dict:
    """One CutMix + DM(CE) cell of smallnet on synthetic images, one trial per seed."""
    return {
        "name": name,
        "grid": {
            "dataset": ["synthetic"],
            "backbone": ["smallnet"],
            "method": ["cutmix"],
            "loss": ["dm_ce"],
            "seeds": list(range(seeds)),
        },
        "recipe": "smoke",
        "epochs": epochs,
        "data": {"synthetic": images},
        "eval": {"mixed_batch": min(64, images["synthetic_images"]["test"])},
        "resources": {"cpus_per_worker": cpus, "max_concurrent_trials": 1},
    }


def trivial_spec(trials: int) -> dict[str, Any]:
    """``trials`` trials of one trivial cell (one seed each): seconds of Ray, not of training."""
    images = {"num_classes": 4, "image_size": 16, "synthetic_images": {"train": 32, "test": 16}}
    return _spec("overhead-trivial", trials, 1, images, 1)


def cell_spec(images: int, cpus: float, trials: int = 2) -> dict[str, Any]:
    """Cells of about a minute: smallnet on synthetic 32 px, ``images`` training images."""
    data = {
        "num_classes": 10,
        "image_size": 32,
        "synthetic_images": {"train": images, "test": 512},
    }
    return _spec("overhead-cell", trials, CELL_EPOCHS, data, cpus)


def calibrate(cpus: float, seconds: float) -> tuple[int, float]:
    """Training images per trial so that its steps take ``seconds``; and the images/s seen.

    The best of a few short windows: other work on the machine only ever slows a window down.
    """
    import torch

    from service.spec.cells import trials
    from service.spec.reading import spec_from_dict
    from trainers.loop import build_trial, train_step

    torch.set_num_threads(max(1, int(cpus)))
    warmup, windows, steps = 3, 5, 6
    images = (warmup + windows * steps) * CELL_BATCH
    (_, _, config), *_ = trials(spec_from_dict(cell_spec(images, cpus, trials=1)))
    trial = build_trial(config.model_copy(update={"device": "cpu"}))
    trial.train_model.train()
    order = trial.epoch_indices(0)
    batches = [order[i : i + CELL_BATCH] for i in range(0, len(order), CELL_BATCH)]

    def step(index: torch.Tensor) -> None:
        train_step(trial, trial.train_set.read(index), trial.train_set.labels[index]).item()

    for index in batches[:warmup]:
        step(index)
    rates = []
    for window in range(windows):
        chosen = batches[warmup + window * steps : warmup + (window + 1) * steps]
        started = time.perf_counter()
        for index in chosen:
            step(index)
        rates.append(sum(len(b) for b in chosen) / (time.perf_counter() - started))
    rate = max(rates)
    images = math.ceil(rate * seconds / CELL_EPOCHS / CELL_BATCH) * CELL_BATCH
    return max(images, 4 * CELL_BATCH), rate


# --- children: one local Ray each --------------------------------------------------------------


def _read_log(path: Path) -> dict[str, float]:
    """Training seconds (sum of epoch_time_s, the last report of each epoch) and the log's span."""
    epochs: dict[int, float] = {}
    stamps = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            stamps.append(datetime.strptime(line[:19], LOG_STAMP))
        found = EPOCH_LINE.match(line)
        if found:
            epochs[int(found.group(1))] = float(found.group(2))
    span = (stamps[-1] - stamps[0]).total_seconds() if stamps else float("nan")
    return {"train_s": sum(epochs.values()), "epochs": len(epochs), "log_s": span}


def _spans(events: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [
        {"trial_id": trial_id, "tune_s": times["end"] - times["start"]}
        for trial_id, times in sorted(events.items(), key=lambda item: item[1]["start"])
        if "start" in times and "end" in times
    ]


def trial_clock(events: dict[str, dict[str, float]]) -> Any:
    """A Tune callback writing when the driver sees each trial start and end into ``events``."""
    from ray import tune

    class Clock(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            events.setdefault(trial.trial_id, {}).setdefault("start", time.perf_counter())

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            events.setdefault(trial.trial_id, {})["end"] = time.perf_counter()

        on_trial_error = on_trial_complete

    return Clock()


def child_engine(raw: dict[str, Any]) -> dict[str, Any]:
    """The spec through ``service.sweep.engine.run_sweep``, on a Ray this process starts."""
    import ray
    import yaml

    from service.results.folder import SweepFolder
    from service.spec.reading import spec_from_dict
    from service.sweep.engine import connect, run_sweep

    spec = spec_from_dict(raw)
    events: dict[str, dict[str, float]] = {}

    started = time.perf_counter()
    connect(spec)  # ray.init(), as `dmsweep run` starts its local Ray
    ray_start = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as storage:
            started = time.perf_counter()
            text = yaml.safe_dump(raw, sort_keys=False)
            outcome = run_sweep(spec, text, storage_path=storage, callbacks=[trial_clock(events)])
            wall = time.perf_counter() - started
            folder = SweepFolder(outcome.folder.path)
            trials = _spans(events)
            for trial in trials:
                log = folder.log_file(trial["trial_id"])
                trial.update(_read_log(log) if log.is_file() else {})
            records = {r.trial_id: r.status.value for r in folder.records()}
            for trial in trials:
                trial["status"] = records.get(trial["trial_id"], "no record")
    finally:
        ray.shutdown()
    return {"ray_start_s": ray_start, "wall_s": wall, "trials": trials, "counts": outcome.counts}


def _plain_trial(config: dict[str, Any]) -> None:
    """A Tune function trial: the loop itself, each epoch reported with its checkpoint."""
    from ray import tune

    from trainers.config import TrainConfig
    from trainers.loop import run

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    run(TrainConfig.model_validate(config["trial"]), report)


def child_tune(raw: dict[str, Any], reuse_actors: bool) -> dict[str, Any]:
    """The spec's TrainConfigs as plain Ray Tune function trials (no Ray Train, no MLflow)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from service.spec.cells import trials
    from service.spec.reading import spec_from_dict
    from service.sweep.ray_setup import ray_init_options

    spec = spec_from_dict(raw)
    configs = [config.model_dump(mode="json") for _, _, config in trials(spec)]
    events: dict[str, dict[str, float]] = {}

    started = time.perf_counter()
    ray.init(**ray_init_options("local", slots=1))  # as service.sweep.engine.connect starts one
    ray_start = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as storage:
            cpus = spec.resources.cpus_per_worker
            tuner = tune.Tuner(
                tune.with_resources(_plain_trial, {"cpu": cpus}),
                param_space={"trial": tune.grid_search(configs)},
                tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=reuse_actors),
                run_config=tune.RunConfig(
                    name="plain", storage_path=storage, callbacks=[trial_clock(events)], verbose=0
                ),
            )
            started = time.perf_counter()
            results = tuner.fit()
            wall = time.perf_counter() - started
            errors = len(results.errors)
    finally:
        ray.shutdown()
    return {
        "ray_start_s": ray_start,
        "wall_s": wall,
        "trials": _spans(events),
        "counts": {"succeeded": len(configs) - errors, "failed": errors},
    }


def child_main(args: argparse.Namespace) -> None:
    raw = json.loads(args.spec)
    if args._child == "engine":
        result = child_engine(raw)
    else:
        result = child_tune(raw, reuse_actors=args._child == "tune-reuse")
    print(RESULT + json.dumps(result), flush=True)


# --- the parent ---------------------------------------------------------------------------------


def run_child(
    kind: str, spec: dict[str, Any], timeout: float, notes: list[str]
) -> dict[str, Any] | None:
    """One configuration in a child process (its own session and Ray); its JSON result."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_child",
        kind,
        "--spec",
        json.dumps(spec),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"PYTHONPATH": str(REPO), "RAY_AIR_NEW_OUTPUT": "0"})
    with tempfile.TemporaryFile(mode="w+") as output:
        child = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            notes.append(f"{kind}: no result within {timeout:.0f} s")
        # What is left of the child's session is its Ray, should it outlive the child: Ray's own
        # processes end shortly after ray.shutdown(), so they get 10 s before any signal.
        left = end_session(child.pid, wait_s=10, grace_s=10)
        child.wait()
        if left:
            notes.append(f"{kind}: {left} process(es) outlived the child")
        output.seek(0)
        text = output.read()
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line.removeprefix(RESULT))
    tail = "\n".join(text.splitlines()[-30:])
    notes.append(f"{kind} failed, exit {child.returncode}:\n{tail}")
    return None


def _failed(result: dict[str, Any]) -> str:
    bad = {k: v for k, v in result["counts"].items() if k != "succeeded" and v}
    return ", ".join(f"{n} {status}" for status, n in bad.items())


def overhead_table(console, args: argparse.Namespace, notes: list[str]) -> None:
    from rich.table import Table

    spec = trivial_spec(args.trials)
    runs = [
        ("plain Tune function trial, Tune's defaults", "tune", "no"),
        ("plain Tune function trial, reuse_actors", "tune-reuse", "no"),
        ("engine: one-worker trial in its Tune process", "engine", "sqlite"),
    ]
    rows = []
    for label, kind, mlflow in runs:
        result = run_child(kind, spec, args.timeout, notes)
        if result is None or not result["trials"]:
            rows.append((label, mlflow, None))
            continue
        if _failed(result):
            notes.append(f"{label}: {_failed(result)}")
        rows.append((label, mlflow, result))
    plain = rows[0][2]
    base = statistics.median(t["tune_s"] for t in plain["trials"]) if plain else None
    base_sweep = plain["wall_s"] / args.trials if plain else None

    table = Table(
        title=f"1. per-trial overhead: {args.trials} trivial trials one at a time "
        "(synthetic 16 px, 32 train / 16 test images, smallnet, 1 epoch, 1 CPU)"
    )
    columns = (
        "trial",
        "MLflow",
        "s / trial (median)",
        "sweep / trial s",
        "outside trials s",
        "Ray start s",
        "ratio vs plain: trial",
        "ratio vs plain: sweep / trial",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "trial" else "right")
    for label, mlflow, result in rows:
        if result is None:
            table.add_row(label, mlflow, "failed", "", "", "", "", "")
            continue
        times = [t["tune_s"] for t in result["trials"]]
        median = statistics.median(times)
        per_trial = result["wall_s"] / args.trials
        table.add_row(
            label,
            mlflow,
            f"{median:.2f}",
            f"{per_trial:.2f}",
            f"{result['wall_s'] - sum(times):.1f}",
            f"{result['ray_start_s']:.1f}",
            f"{median / base:.2f}" if base else "",
            f"{per_trial / base_sweep:.2f}" if base_sweep else "",
        )
    console.print(table)


def cell_table(console, args: argparse.Namespace, notes: list[str]) -> None:
    from rich.table import Table

    images, rate = args.cell_images, None
    if images is None:
        images, rate = calibrate(args.cell_cpus, args.cell_seconds)
    sizing = f"{images} train images"
    if rate:
        sizing += f" (calibrated: best {rate:.0f} img/s here, for {args.cell_seconds:g} s of steps)"
    result = run_child("engine", cell_spec(images, args.cell_cpus), args.timeout, notes)
    title = (
        f"2. time in training steps: 2 trials one at a time through the engine, smallnet "
        f"on synthetic 32 px, {sizing}, 512 test, {CELL_EPOCHS} epochs, "
        f"{args.cell_cpus:g} CPU(s) per trial"
    )
    table = Table(title=title)
    columns = (
        "trial",
        "epochs",
        "img/s in steps",
        "train steps s",
        "trial wall s",
        "fraction",
        "log span s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "trial" else "right")
    if result is None:
        table.add_row("failed", "", "", "", "", "", "")
        console.print(table)
        return
    if _failed(result):
        notes.append(f"cells: {_failed(result)}")
    fractions = []
    for trial in result["trials"]:
        if "train_s" not in trial:
            notes.append(f"cells: no log for trial {trial['trial_id']}")
            continue
        fraction = trial["train_s"] / trial["tune_s"]
        fractions.append(fraction)
        table.add_row(
            trial["trial_id"],
            str(trial["epochs"]),
            f"{trial['epochs'] * images / trial['train_s']:.0f}",
            f"{trial['train_s']:.1f}",
            f"{trial['tune_s']:.1f}",
            f"{fraction:.3f}",
            f"{trial['log_s']:.0f}",
        )
    if fractions:
        table.add_row("mean", "", "", "", "", f"{statistics.mean(fractions):.3f}", "")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 trivial trials, 15 s cells")
    parser.add_argument("--trials", type=int, default=None, help="trivial trials (default 3)")
    parser.add_argument(
        "--cell-seconds", type=float, default=None, help="training seconds per cell (default 35)"
    )
    parser.add_argument("--cell-images", type=int, default=None, help="skip the calibration")
    parser.add_argument("--cell-cpus", type=float, default=2, help="CPUs of a cell's worker")
    parser.add_argument("--no-cells", action="store_true", help="skip part 2")
    parser.add_argument("--timeout", type=float, default=400, help="seconds per child")
    parser.add_argument(
        "--_child", choices=("engine", "tune", "tune-reuse"), help=argparse.SUPPRESS
    )
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child_main(args)
        return
    args.trials = args.trials or (2 if args.quick else 3)
    args.cell_seconds = args.cell_seconds or (15 if args.quick else 35)

    import ray
    import torch
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 140)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(
        f"Sweep overhead: {os.cpu_count()} CPUs, ray {ray.__version__}, torch "
        f"{torch.__version__}, load average at start {load}"
    )
    console.print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    notes: list[str] = []
    started = time.perf_counter()
    overhead_table(console, args, notes)
    if not args.no_cells:
        cell_table(console, args, notes)
    for note in notes:
        console.print(f"[yellow]note[/]: {note}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"total {time.perf_counter() - started:.0f} s, load average at end {load}")


if __name__ == "__main__":
    main()
