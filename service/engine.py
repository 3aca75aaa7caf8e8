"""Run a sweep spec on Ray: Ray Tune schedules the trials, each trial a Ray Train V2 run.

The V2 pattern: each Tune trial is a function (``service.trial.run_trial``, the trial's
*driver*) that builds a ``TorchTrainer`` over ``service.worker.train_loop_per_worker`` and
reports to Tune through ``TuneReportCallback``. Around it:

* **Trials.** Without ``search``, Tune's grid over (cell, seed): one trial each. With
  ``search``, ``CellStudies`` (one Optuna study per cell) suggests ``num_samples`` settings per
  cell and seed, and ASHA (one per cell: ``service.scheduler``) stops weak trials early.
* **Resources.** Each worker asks for the spec's CPUs and GPUs. A trial's driver asks for no CPU
  and one ``trial_slot``, a custom resource the local Ray is started with (one slot per trial
  that fits): drivers then never take a worker's CPU, and two 1-CPU trials share 2 cores. On a
  cluster without slots, the driver asks for 0.01 CPU.
* **Faults.** Ray Train's ``FailureConfig`` restarts a failed worker group from its last
  checkpoint; Tune's retries a trial whose driver was lost, and the Train run, named after the
  trial, resumes from its own checkpoints. Failures that would repeat (NaN, bad data) are not
  retried (see ``service.worker``): the trial is recorded as failed and the sweep goes on.
* **Resume.** ``resume_sweep`` continues a sweep whose driver died or was interrupted with
  ``Tuner.restore``: finished trials are not run again, interrupted ones resume.
* **Records.** Each trial writes its record to the sweep folder (``service.sweep_folder``); the
  sweep's results table and report are built from those records.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import yaml
from ray import tune

from service import tracking
from service.capacity import autoscaling_nodes, resource_problems
from service.placement_groups import PlacementGroupReaper
from service.ray_options import SLOT, ray_init_options
from service.report import write_report
from service.scheduler import StudyASHA
from service.searcher import CellStudies, StudyPlan
from service.spec import (
    SweepSpec,
    check_data,
    expand,
    search_space,
    spec_from_dict,
    study_name,
)
from service.sweep_events import SweepCallback
from service.sweep_folder import SweepFolder, find_sweep, new_sweep_id
from service.trial import SweepContext, build_context, run_trial

TUNE_RETRIES = 2  # driver restarts per trial (a lost node)
TERMINAL = frozenset({"succeeded", "failed", "pruned"})


class SpecError(ValueError):
    """The spec cannot run here: its data, or resources the cluster does not have."""


@dataclass
class SweepOutcome:
    """How a sweep ended."""

    folder: SweepFolder
    counts: dict[str, int]
    interrupted: bool
    outputs: dict[str, Path] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)
    # what the tracking server could not store (the files are on disk all the same)
    tracking_problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all trials succeeded (or were pruned), 1 some failed, 130 interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.counts.get("failed", 0) else 0


# --- trials ------------------------------------------------------------------------------------


# --- the driver --------------------------------------------------------------------------------


def connect(spec: SweepSpec, address: str | None = None) -> None:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), or start a local Ray.

    The local Ray gets one ``trial_slot`` per trial that fits its CPUs; a Ray already started in
    this process (tests, notebooks) is used as it is. The options: ``service.ray_options``.
    """
    # The sweep draws its own progress; Tune's tables would interleave with it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    resources = spec.resources
    per_trial = resources.workers_per_trial * resources.cpus_per_worker
    slots = max(1, math.floor((os.cpu_count() or 1) / per_trial))
    if resources.max_concurrent_trials is not None:
        slots = min(slots, resources.max_concurrent_trials)
    ray.init(**ray_init_options(address, slots=slots))


def preflight(spec: SweepSpec, address: str | None = None) -> None:
    """What can be checked before a sweep exists: its data roots, then Ray's resources."""
    problems = check_data(spec)
    if problems:
        raise SpecError("data: " + "; ".join(problems))
    connect(spec, address)
    _check_cluster(spec)


def _check_cluster(spec: SweepSpec) -> None:
    """Refuse, before any trial starts, a trial the cluster could never place."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = resource_problems(spec.resources, nodes + autoscaling_nodes())
    if problems:
        raise SpecError("; ".join(f"{loc}: {message}" for loc, message in problems))


def _driver_resources() -> tune.PlacementGroupFactory:
    if ray.cluster_resources().get(SLOT, 0) >= 1:
        return tune.PlacementGroupFactory([{"CPU": 0, SLOT: 1}])
    return tune.PlacementGroupFactory([{"CPU": 0.01}])


def _study_plans(spec: SweepSpec, sweep_id: str, context: SweepContext) -> list[StudyPlan]:
    assert spec.search is not None
    plans = []
    several_seeds = len(spec.grid.seeds) > 1
    for index, cell in enumerate(expand(spec)):
        for seed in spec.grid.seeds:
            name = study_name(sweep_id, cell, seed if several_seeds else None)
            plans.append(
                StudyPlan(
                    name=name,
                    cell=cell.cell_id,
                    seed=seed,
                    space=search_space(spec, cell),
                    budget=spec.search.num_samples or 1,
                    epochs=context.cells[cell.cell_id]["epochs"],
                    sampler_seed=1000 * index + seed,
                )
            )
    return plans


def _tune_config(spec: SweepSpec, sweep_id: str, folder: SweepFolder, context: SweepContext):
    search = spec.search
    limit = spec.resources.max_concurrent_trials
    if search is None:
        return tune.TuneConfig(max_concurrent_trials=limit), {
            "cell": tune.grid_search(list(context.cells)),
            "seed": tune.grid_search(list(spec.grid.seeds)),
        }
    plans = _study_plans(spec, sweep_id, context)
    storage = search.storage or folder.optuna_url
    searcher = CellStudies(
        plans, storage_url=storage, sampler=search.sampler, metric=search.metric, mode=search.mode
    )
    scheduler = None
    if search.scheduler is not None:
        scheduler = StudyASHA(
            time_attr="epoch",
            metric=search.metric,
            mode=search.mode,
            max_t=search.scheduler.max_t,
            grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
        )
    config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=sum(p.budget for p in plans),
        max_concurrent_trials=limit,
    )
    return config, {}


def _trainable(context: SweepContext):
    return tune.with_resources(
        tune.with_parameters(run_trial, context=context), _driver_resources()
    )


def _run_config(spec: SweepSpec, folder: SweepFolder, callback: SweepCallback) -> tune.RunConfig:
    return tune.RunConfig(
        name=folder.sweep_id,
        storage_path=str(folder.path.parent),
        failure_config=tune.FailureConfig(max_failures=TUNE_RETRIES),
        callbacks=[callback, PlacementGroupReaper()],
        verbose=0,
    )


def create_sweep(
    spec: SweepSpec,
    spec_text: str,
    *,
    storage_path: str | Path | None = None,
    tracking_uri: str | None = None,
    sweep_id: str | None = None,
) -> SweepFolder:
    """A new sweep folder with the spec and its state; the MLflow parent run.

    ``sweep_id`` is given by the sweep service, which names a sweep when it is submitted; a
    sweep of that id must not exist yet.
    """
    problems = check_data(spec)
    if problems:
        raise SpecError("data: " + "; ".join(problems))
    root = Path(storage_path or spec.storage_path).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    sweep_id = sweep_id or new_sweep_id(spec.name, root)
    folder = SweepFolder(root / sweep_id)
    try:
        folder.path.mkdir()
    except FileExistsError:
        raise SpecError(f"sweep {sweep_id} already exists in {root}") from None
    folder.spec_file.write_text(spec_text)
    uri = tracking_uri or spec.tracking_uri or tracking.default_tracking_uri(root)
    artifacts = None
    if uri.startswith("sqlite:") and not (tracking_uri or spec.tracking_uri):
        artifacts = tracking.default_artifact_location(root, spec.name)
    track = tracking.start_sweep(
        uri=uri,
        experiment=spec.name,
        sweep_id=sweep_id,
        spec_file=folder.spec_file,
        tags={"dmsweep.spec": spec.name, "dmsweep.search": str(spec.search is not None)},
        artifact_location=artifacts,
    )
    folder.write_state(
        {
            "sweep_id": sweep_id,
            "name": spec.name,
            "status": "created",
            "tracking": asdict(track),
            "git_commit": tracking.git_commit(),
        }
    )
    return folder


def execute(
    folder: SweepFolder,
    *,
    address: str | None = None,
    resume: bool = False,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> SweepOutcome:
    """Run (or with ``resume``, continue) the sweep in ``folder`` to its end; how it ended."""
    state = folder.read_state()
    spec = spec_from_dict(yaml.safe_load(folder.spec_file.read_text()))
    connect(spec, address)
    _check_cluster(spec)
    track = tracking.Tracking(**state["tracking"]) if state.get("tracking") else None
    if resume and track is not None:
        tracking.reopen_sweep(track)
    context = build_context(spec, folder, track)
    callback = SweepCallback(folder, context, on_change)
    folder.update_state(status="running")
    if resume and tune.Tuner.can_restore(str(folder.path)):
        tuner = tune.Tuner.restore(
            str(folder.path),
            trainable=_trainable(context),
            resume_unfinished=True,
            resume_errored=True,
        )
        # Tuner.restore keeps the callbacks of the first run; this run's need the new display.
        tuner._local_tuner._run_config.callbacks = [callback, PlacementGroupReaper()]
    else:
        tune_config, param_space = _tune_config(spec, folder.sweep_id, folder, context)
        tuner = tune.Tuner(
            _trainable(context),
            param_space=param_space,
            tune_config=tune_config,
            run_config=_run_config(spec, folder, callback),
        )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        callback.interrupted = True
    return finish(folder, spec, interrupted=callback.interrupted, track=track)


def total_trials(spec: SweepSpec) -> int:
    """Trials of a sweep: cells x seeds, times the settings per cell when tuning."""
    samples = spec.search.num_samples if spec.search is not None else 1
    return len(expand(spec)) * len(spec.grid.seeds) * (samples or 1)


def finish(
    folder: SweepFolder,
    spec: SweepSpec,
    *,
    interrupted: bool,
    track: tracking.Tracking | None,
) -> SweepOutcome:
    """Results and report from the trial records; the parent run closed unless interrupted."""
    records = folder.records()
    # Every trial that ends gets a record; Tune returns early, without error, on Ctrl-C.
    interrupted = interrupted or len(records) < total_trials(spec)
    counts = {status: 0 for status in sorted(TERMINAL)}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    outputs = write_sweep_report(folder, spec, records) if records else {}
    best = best_settings(spec, records)
    if best:
        best_file = folder.path / "best_settings.yaml"
        best_file.write_text(yaml.safe_dump(best, sort_keys=False))
        outputs["best"] = best_file
    status = "interrupted" if interrupted else ("failed" if counts["failed"] else "succeeded")
    folder.update_state(status=status, counts=counts)
    problems: list[str] = []
    if track is not None and not interrupted:
        problems = tracking.finish_sweep(
            track, outputs, counts, status="FAILED" if counts["failed"] else "FINISHED"
        )
        folder.update_state(tracking_problems=problems)
    return SweepOutcome(folder, counts, interrupted, outputs, best, problems)


def write_sweep_report(
    folder: SweepFolder, spec: SweepSpec, records: list[dict[str, Any]]
) -> dict[str, Path]:
    """Write the sweep's results and report; their paths.

    ``results.parquet`` holds every trial. The paper-style table summarises every trial, or, with
    a search, each cell's best setting (failed trials still counted).
    """
    table_rows = None
    if spec.search is not None:
        table_rows = [*_best_records(spec, records).values()]
        table_rows += [r for r in records if r["status"] == "failed"]
    return write_report(records, folder.path, table_rows=table_rows)


def _best_records(spec: SweepSpec, records: list[dict[str, Any]]) -> dict[tuple[str, int], dict]:
    assert spec.search is not None
    metric, sign = spec.search.metric, 1 if spec.search.mode == "max" else -1
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        if record["status"] != "succeeded" or metric not in record:
            continue
        key = (record["cell"], record["seed"])
        if key not in best or sign * record[metric] > sign * best[key][metric]:
            best[key] = record
    return best


def best_settings(spec: SweepSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With a search: each cell's best finished setting by the search metric."""
    if spec.search is None:
        return []
    metric = spec.search.metric
    best = _best_records(spec, records)
    return [
        {
            "cell": cell,
            "seed": seed,
            metric: record[metric],
            "setting": {
                k.removeprefix("hp."): v
                for k, v in record.items()
                if k.startswith("hp.") and k.removeprefix("hp.") in spec.search.parameters
            },
            "trial": record["name"],
        }
        for (cell, seed), record in best.items()
    ]


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    *,
    address: str | None = None,
    storage_path: str | Path | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> SweepOutcome:
    """A new sweep of ``spec``, run to its end."""
    preflight(spec, address)
    folder = create_sweep(spec, spec_text, storage_path=storage_path)
    return execute(folder, address=address, on_change=on_change)


def resume_sweep(
    id_or_path: str,
    *,
    storage_path: str | Path = "./runs",
    address: str | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> SweepOutcome:
    """Continue a sweep whose driver died or was interrupted; finished trials are kept."""
    folder = find_sweep(id_or_path, storage_path)
    return execute(folder, address=address, resume=True, on_change=on_change)
