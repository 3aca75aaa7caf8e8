"""Run a sweep spec on Ray: Ray Tune schedules the trials, each trial a Ray Train V2 run.

The V2 pattern: each Tune trial is a function (``run_trial``, the trial's *driver*) that builds a
``TorchTrainer`` over ``service.worker.train_loop_per_worker`` and reports to Tune through
``TuneReportCallback``. Around it:

* **Trials.** Without ``search``, Tune's grid over (cell, seed): one trial each. With
  ``search``, ``CellStudies`` (one Optuna study per cell) suggests ``num_samples`` settings per
  cell and seed, and ASHA stops weak trials early where the spec asks.
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
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import yaml
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from service import tracking
from service.report import write_report
from service.searcher import CellStudies, StudyPlan
from service.spec import (
    Cell,
    SweepSpec,
    check_data,
    expand,
    search_space,
    spec_from_dict,
    study_name,
    train_config,
)
from service.sweep_folder import SweepFolder, find_sweep, new_sweep_id
from service.worker import append_log, error_file, train_loop_per_worker
from trainers.config import TrainConfig
from trainers.data.datasets import ROOT_VARIABLE
from trainers.recipes import get_recipe

SLOT = "trial_slot"
# Ray Train's controller polls its workers this often (default 2 s); each ``report`` waits for
# a poll, so at 2 s a trial of 2 epochs spends seconds idle. Measured in bench/sweep_overhead.py.
HEALTH_CHECK_INTERVAL_S = "0.2"
TRAIN_RETRIES = 2  # worker group restarts per trial (from the last checkpoint)
TUNE_RETRIES = 2  # driver restarts per trial (a lost node)
CHECKPOINTS_KEPT = 2
TERMINAL = frozenset({"succeeded", "failed", "pruned"})


class SpecError(ValueError):
    """The spec cannot run here: its data, or resources the cluster does not have."""


class TrialFailedError(RuntimeError):
    """A trial failed in a way a retry would repeat (the message says why)."""


@dataclass(frozen=True)
class SweepContext:
    """What every trial's driver needs; sent once to the cluster with ``tune.with_parameters``."""

    folder: str
    configs: dict[str, dict[str, Any]]  # "<cell id>#<seed>" -> TrainConfig as JSON
    cells: dict[str, dict[str, Any]]  # cell id -> identity, hyperparameters, comparable
    tracking: dict[str, str] | None
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


@dataclass
class SweepOutcome:
    """How a sweep ended."""

    folder: SweepFolder
    counts: dict[str, int]
    interrupted: bool
    outputs: dict[str, Path] = field(default_factory=dict)
    best: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all trials succeeded (or were pruned), 1 some failed, 130 interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.counts.get("failed", 0) else 0


# --- trials ------------------------------------------------------------------------------------


def _config_key(cell_id: str, seed: int) -> str:
    return f"{cell_id}#{seed}"


def with_params(config: dict[str, Any], params: dict[str, float]) -> TrainConfig:
    """A trial's TrainConfig with a sampled setting substituted (eta/xi/t, alpha, lr, wd)."""
    config = yaml.safe_load(yaml.safe_dump(config))  # a deep copy of plain data
    for name, value in params.items():
        if name in ("eta", "xi", "t"):
            config["loss"][name] = value
        elif name == "alpha":
            config["mixing"]["alpha"] = value
        else:
            config["recipe_overrides"][name] = value
    return TrainConfig.model_validate(config)


def trial_name(cell_id: str, seed: int, params: dict[str, float]) -> str:
    """``dataset/backbone/method/loss/seed<k>``, then the sampled setting when tuning."""
    name = f"{cell_id}/seed{seed}"
    if params:
        name += "/" + ",".join(f"{k}={v:.4g}" for k, v in sorted(params.items()))
    return name


def _flat_params(config: TrainConfig, params: dict[str, float]) -> dict[str, str]:
    resolved = get_recipe(config.recipe, config.recipe_overrides).model_dump(mode="json")
    return {
        **tracking.flatten(config.model_dump(mode="json")),
        **tracking.flatten(resolved, "resolved_recipe"),
        **tracking.flatten({k: v for k, v in params.items()}, "search"),
    }


def _record(
    context: SweepContext,
    trial_id: str,
    cell_id: str,
    seed: int,
    params: dict[str, float],
    status: str,
    **extra: Any,
) -> dict[str, Any]:
    cell = context.cells[cell_id]
    return {
        "trial_id": trial_id,
        "name": trial_name(cell_id, seed, params),
        "cell": cell_id,
        "dataset": cell["dataset"],
        "backbone": cell["backbone"],
        "method": cell["method"],
        "loss": cell["loss"],
        "seed": seed,
        "status": status,
        "recipe": cell["recipe"],
        "epochs": cell["epochs"],
        "comparable": cell["comparable"],
        **{f"hp.{k}": v for k, v in cell["hyperparameters"].items()},
        **{f"hp.{k}": v for k, v in params.items()},
        **extra,
    }


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """One Tune trial: a TorchTrainer over the trial's workers; writes the trial's record."""
    trial_id = tune.get_context().get_trial_id()
    folder = SweepFolder(Path(context.folder))
    cell_id, seed = config["cell"], int(config["seed"])
    params = dict(config.get("params") or {})
    log_path = folder.log_file(trial_id)
    earlier = folder.read_record(trial_id)
    if earlier is not None and earlier["status"] == "failed" and earlier.get("deterministic"):
        raise TrialFailedError(earlier["error"])  # a retry of a failure that would repeat
    if earlier is not None and earlier["status"] == "succeeded":
        # Finished before its sweep's driver died, after Tune's last snapshot: not run again.
        tune.report({k: v for k, v in earlier.items() if isinstance(v, (int, float))})
        return

    def fail(message: str, trace: str) -> None:  # a failure that a retry would repeat
        folder.write_record(
            trial_id,
            _record(
                context,
                trial_id,
                cell_id,
                seed,
                params,
                "failed",
                error=message,
                deterministic=True,
                traceback=trace,
            ),
        )

    try:
        trial = with_params(context.configs[_config_key(cell_id, seed)], params)
    except ValueError as error:  # a sampled setting TrainConfig refuses
        fail(str(error), traceback.format_exc())
        raise TrialFailedError(str(error)) from None
    append_log(log_path, f"trial {trial_name(cell_id, seed, params)} ({trial_id})")

    track = tracking.Tracking(**context.tracking) if context.tracking else None
    run_id = None
    if track is not None:
        cell = context.cells[cell_id]
        run_id = tracking.child_run(
            track,
            trial_id=trial_id,
            name=trial_name(cell_id, seed, params),
            tags={
                **{k: str(cell[k]) for k in ("dataset", "backbone", "method", "loss")},
                "seed": str(seed),
                "cell": cell_id,
                **tracking.provenance(),
            },
            params=_flat_params(trial, params),
            trial_yaml=tracking.trial_yaml(trial.model_dump(mode="json")),
        )
    gpus = context.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            "trial": trial.model_dump(mode="json"),
            "trial_id": trial_id,
            "sweep_dir": context.folder,
            "tracking": context.tracking,
            "run_id": run_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=context.workers,
            use_gpu=gpus > 0,
            resources_per_worker={
                "CPU": context.cpus_per_worker,
                **({"GPU": gpus} if gpus else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            # Named after the trial: a restarted driver finds this run and resumes it.
            name=trial_id,
            storage_path=str(folder.train_dir),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=ray.train.FailureConfig(max_failures=TRAIN_RETRIES),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        trace = traceback.format_exc()
        # No record here: Tune may retry the trial, or be stopping it on purpose (ASHA), and
        # only the sweep's driver knows which (SweepCallback writes the record).
        append_log(log_path, f"ended by {message}\n{trace}")
        raise
    error_path = error_file(folder, trial_id)
    if error_path.is_file():
        failure = yaml.safe_load(error_path.read_text())
        fail(failure["error"], failure["traceback"])
        raise TrialFailedError(failure["error"])
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    folder.write_record(
        trial_id, _record(context, trial_id, cell_id, seed, params, "succeeded", **metrics)
    )


# --- the driver --------------------------------------------------------------------------------


class SweepCallback(tune.Callback):
    """In the sweep's driver: records of trials that ended without writing their own.

    Those are trials stopped early by ASHA and trials whose driver was lost; the callback also
    feeds the command line's progress display.
    """

    def __init__(
        self,
        folder: SweepFolder,
        context: SweepContext,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.folder = folder
        self.context = context
        self.on_change = on_change
        self.running: set[str] = set()
        self.interrupted = False

    # Tune saves its callbacks with the experiment; a live display does not pickle.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_change": None}

    def _identity(self, trial: Any) -> tuple[str, int, dict[str, float]]:
        return (
            trial.config["cell"],
            int(trial.config["seed"]),
            dict(trial.config.get("params") or {}),
        )

    def _notify(self, event: str, trial: Any, result: dict | None = None) -> None:
        if self.on_change is not None:
            cell, seed, params = self._identity(trial)
            self.on_change(
                {
                    "event": event,
                    "trial_id": trial.trial_id,
                    "name": trial_name(cell, seed, params),
                    "running": len(self.running),
                    "result": result or {},
                    "record": self.folder.read_record(trial.trial_id),
                }
            )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Progress: one more running."""
        self.running.add(trial.trial_id)
        self._notify("start", trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """Progress: an epoch."""
        self._notify("result", trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Write the record of a trial that Tune stopped: succeeded at its last epoch, else pruned.

        A trial that returned wrote its own record; one that Tune stopped (ASHA) did not.
        """
        self.running.discard(trial.trial_id)
        if self.folder.read_record(trial.trial_id) is None:
            cell, seed, params = self._identity(trial)
            last = {
                k: v for k, v in (trial.last_result or {}).items() if isinstance(v, (int, float))
            }
            # ASHA also stops a trial when its last epoch reaches max_t: that one finished.
            finished = last.get("epoch", 0) >= self.context.cells[cell]["epochs"]
            status = "succeeded" if finished else "pruned"
            self.folder.write_record(
                trial.trial_id,
                _record(self.context, trial.trial_id, cell, seed, params, status, **last),
            )
            if not finished:
                self._close_run(trial.trial_id, "KILLED", {"dmsweep.status": "pruned"})
        self._notify("complete", trial, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial whose driver could not write its record (lost) gets one here."""
        self.running.discard(trial.trial_id)
        if self.folder.read_record(trial.trial_id) is None:
            cell, seed, params = self._identity(trial)
            message = _error_text(trial)
            self.folder.write_record(
                trial.trial_id,
                _record(
                    self.context,
                    trial.trial_id,
                    cell,
                    seed,
                    params,
                    "failed",
                    error=message.strip().splitlines()[-1] if message.strip() else "unknown",
                    deterministic=False,
                    traceback=message,
                ),
            )
            append_log(self.folder.log_file(trial.trial_id), f"failed:\n{message}")
        record = self.folder.read_record(trial.trial_id) or {}
        if not record.get("deterministic"):  # the worker closed those itself
            error = record.get("error", "the trial failed")
            self._close_run(trial.trial_id, "FAILED", {"dmsweep.error": error[:5000]})
        self._notify("error", trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """An experiment that ends with unfinished trials was interrupted."""
        self.interrupted = any(t.status not in ("TERMINATED", "ERROR") for t in trials)

    def _close_run(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        if self.context.tracking is None:
            return
        track = tracking.Tracking(**self.context.tracking)
        run_id = tracking.find_trial_run(track, trial_id)
        if run_id is not None:
            client = track.client()
            for key, value in tags.items():
                tracking.retrying(lambda k=key, v=value: client.set_tag(run_id, k, v))
            tracking.retrying(lambda: client.set_terminated(run_id, status=status))


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        return Path(path).read_text() if path else "the trial ended with an error"
    except OSError:
        return f"the trial ended with an error (its error file {path} is not readable)"


def _resolve_data_roots(config: TrainConfig) -> TrainConfig:
    """Absolute data roots: workers read neither this shell's variables nor its directory."""
    data = config.data
    if data.name == "synthetic" or data.source == "synthetic":
        return config
    root = data.root or str(Path(os.environ.get(ROOT_VARIABLE, ".")) / data.name)
    root = str(Path(root).expanduser().resolve())
    return config.model_copy(update={"data": data.model_copy(update={"root": root})})


def _comparable(spec: SweepSpec, cell: Cell) -> bool:
    """Whether the paper's number for the cell compares with ours: the paper's recipe as is."""
    data = spec.data.get(cell.dataset)
    return (
        cell.dataset != "synthetic"
        and cell.epochs is None
        and not cell.recipe_overrides
        and spec.batch_size is None
        and (data is None or (data.subset is None and data.label_fraction is None))
    )


def build_context(spec: SweepSpec, folder: SweepFolder, track: tracking.Tracking | None):
    """Every trial's TrainConfig and identity, resolved once in the driver."""
    configs, cells = {}, {}
    for cell in expand(spec):
        for seed in spec.grid.seeds:
            config = _resolve_data_roots(train_config(spec, cell, seed))
            configs[_config_key(cell.cell_id, seed)] = config.model_dump(mode="json")
        recipe = get_recipe(spec.recipe, cell.recipe_overrides)
        cells[cell.cell_id] = {
            "dataset": cell.dataset,
            "backbone": cell.backbone,
            "method": cell.method,
            "loss": cell.loss,
            "recipe": spec.recipe,
            "epochs": cell.epochs or recipe.epochs,
            "hyperparameters": dict(cell.hyperparameters),
            "comparable": _comparable(spec, cell),
        }
    resources = spec.resources
    return SweepContext(
        folder=str(folder.path),
        configs=configs,
        cells=cells,
        tracking=asdict(track) if track is not None else None,
        workers=resources.workers_per_trial,
        cpus_per_worker=resources.cpus_per_worker,
        gpus_per_worker=resources.gpus_per_worker,
    )


def connect(spec: SweepSpec, address: str | None = None) -> None:
    """Join the cluster at ``address``, or start a local Ray.

    The local Ray gets one ``trial_slot`` per trial that fits its CPUs; a Ray already started in
    this process (tests, notebooks) is used as it is.
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    # The sweep draws its own progress; Tune's tables would interleave with it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": False,  # each trial has its own log in the sweep folder
        "include_dashboard": True,  # without it Tune leaks the placement groups of stopped trials
    }
    if address is None:
        resources = spec.resources
        per_trial = resources.workers_per_trial * resources.cpus_per_worker
        slots = max(1, math.floor((os.cpu_count() or 1) / per_trial))
        if resources.max_concurrent_trials is not None:
            slots = min(slots, resources.max_concurrent_trials)
        options["resources"] = {SLOT: slots}
    else:
        options["address"] = address
    ray.init(**options)


def preflight(spec: SweepSpec, address: str | None = None) -> None:
    """What can be checked before a sweep exists: its data roots, then Ray's resources."""
    problems = check_data(spec)
    if problems:
        raise SpecError("data: " + "; ".join(problems))
    connect(spec, address)
    _check_cluster(spec)


def _check_cluster(spec: SweepSpec) -> None:
    """Refuse, before any trial starts, a trial the cluster could never place."""
    resources = spec.resources
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_trial_gpus = resources.workers_per_trial * resources.gpus_per_worker
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    if per_trial_gpus > total_gpus:
        raise SpecError(
            f"resources: a trial asks for {per_trial_gpus:g} GPUs "
            f"({resources.workers_per_trial} workers x {resources.gpus_per_worker:g}), the "
            f"cluster has {total_gpus:g}; lower resources.gpus_per_worker or workers_per_trial"
        )
    if resources.gpus_per_worker > max((n.get("GPU", 0) for n in nodes), default=0):
        raise SpecError(
            f"resources.gpus_per_worker: {resources.gpus_per_worker:g} GPUs per worker, but no "
            "node of the cluster has that many"
        )
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if resources.cpus_per_worker > most_cpus:
        raise SpecError(
            f"resources.cpus_per_worker: {resources.cpus_per_worker:g} CPUs per worker, but the "
            f"largest node has {most_cpus:g}"
        )


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
        scheduler = ASHAScheduler(
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
        callbacks=[callback],
        verbose=0,
    )


def create_sweep(
    spec: SweepSpec,
    spec_text: str,
    *,
    storage_path: str | Path | None = None,
    tracking_uri: str | None = None,
) -> SweepFolder:
    """A new sweep folder with the spec and its state; the MLflow parent run."""
    problems = check_data(spec)
    if problems:
        raise SpecError("data: " + "; ".join(problems))
    root = Path(storage_path or spec.storage_path).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    sweep_id = new_sweep_id(spec.name, root)
    folder = SweepFolder(root / sweep_id)
    folder.path.mkdir()
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
        tuner._local_tuner._run_config.callbacks = [callback]
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
    # Every trial that ends gets a record; Tune returns early, without error, on Ctrl-C.
    interrupted = callback.interrupted or len(folder.records()) < total_trials(spec)
    return finish(folder, spec, interrupted=interrupted, track=track)


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
    counts = {status: 0 for status in sorted(TERMINAL)}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    outputs = write_report(records, folder.path) if records else {}
    best = best_settings(spec, records)
    if best:
        best_file = folder.path / "best_settings.yaml"
        best_file.write_text(yaml.safe_dump(best, sort_keys=False))
        outputs["best"] = best_file
    status = "interrupted" if interrupted else ("failed" if counts["failed"] else "succeeded")
    folder.update_state(status=status, counts=counts)
    if track is not None and not interrupted:
        tracking.finish_sweep(
            track, outputs, counts, status="FAILED" if counts["failed"] else "FINISHED"
        )
    return SweepOutcome(folder, counts, interrupted, outputs, best)


def best_settings(spec: SweepSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With a search: each cell's best finished setting by the search metric."""
    if spec.search is None:
        return []
    metric, sign = spec.search.metric, 1 if spec.search.mode == "max" else -1
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        if record["status"] != "succeeded" or metric not in record:
            continue
        key = (record["cell"], record["seed"])
        if key not in best or sign * record[metric] > sign * best[key][metric]:
            best[key] = record
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
