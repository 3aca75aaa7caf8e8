"""The one training loop: ``run(config, report, resume_from=None)``.

One trial from a :class:`~trainers.config.TrainConfig`: data, backbone, recipe, mixing, loss,
evaluation each epoch, checkpoints. ``report(metrics, checkpoint_dir)`` is called once per epoch
on every rank (``checkpoint_dir`` is a folder written by rank 0, or None); the folder is removed
once ``report`` returns, so a caller that keeps checkpoints copies it there (Ray Train's
``report`` does). ``resume_from`` is such a folder, and resuming continues the same run: same
data order, same random streams, bitwise the same weights on the CPU with deterministic
algorithms.

The loop imports neither Ray nor MLflow. Under ``torch.distributed`` every rank starts from the
same weights (one initialisation seed), draws its own data shard and mixing stream, and metrics
are summed across ranks before they are reported.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from trainers.augment import EvalTransform, TrainAugment, mean_std
from trainers.backbones import build_backbone
from trainers.config import TrainConfig
from trainers.data import ImageSource, open_dataset, subset
from trainers.metrics import fgsm_error, median_of_last, mixed_correct, topk_correct
from trainers.mixing import POLICIES, MixedBatch
from trainers.mixing.base import mixed_batch
from trainers.objectives import Objective, objective
from trainers.recipes import (
    Recipe,
    build_ema,
    build_optimizer,
    build_scheduler,
    epoch_order,
    get_recipe,
)

Report = Callable[[dict[str, float], str | None], None]

CHECKPOINT_FILE = "state.pt"
# Steps between checks of the loss for NaN / inf: each check is a host sync on an accelerator.
FINITE_CHECK_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class _Ranks:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _ranks(config: TrainConfig) -> _Ranks:
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA device is available")
    if use_cuda:
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return _Ranks(rank, world_size, device)


def _all_sum(tensor: Tensor, ranks: _Ranks) -> Tensor:
    if ranks.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _average_buffers(model: nn.Module, ranks: _Ranks) -> None:
    """Average floating-point buffers (batch-norm running statistics) across ranks.

    DDP keeps parameters in step, but each rank updates its running statistics from its own
    last batch; without this, every rank would evaluate (and rank 0 would save) a different model.
    """
    if ranks.world_size == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(ranks.world_size)


# --------------------------------------------------------------------------- mixing


class _Mixer:
    """Mixes a batch with the trial's method and runs the model on it."""

    def __init__(self, method: str, alpha: float | None, recipe: Recipe) -> None:
        self.method, self.alpha, self.recipe = method, alpha, recipe

    def __call__(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, MixedBatch]:
        if self.method == "vanilla":
            same = torch.arange(len(targets), device=targets.device)
            lam = torch.ones(len(targets), device=targets.device)
            return model(inputs), mixed_batch(inputs, targets, lam, same)
        if self.method == "manifoldmix":
            return self._manifold(model, inputs, targets, generator)
        policy, alpha = self.method, self.alpha
        if self.method == "mixup_cutmix":
            # DeiT / RSB A3: Mixup or CutMix per batch (Table 10's alphas).
            use_cutmix = torch.rand((), generator=generator, device=generator.device)
            use_cutmix = bool(use_cutmix < self.recipe.switch_prob)
            policy = "cutmix" if use_cutmix else "mixup"
            recipe_alpha = self.recipe.cutmix_alpha if use_cutmix else self.recipe.mixup_alpha
            alpha = recipe_alpha if recipe_alpha is not None else self.alpha
        batch = POLICIES[policy](inputs, targets, alpha=alpha, generator=generator)
        return model(batch.inputs), batch

    def _manifold(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, MixedBatch]:
        stages = _unwrap(model).mix_stages
        stage = int(torch.randint(stages, (1,), generator=generator, device=generator.device))
        mixed: list[MixedBatch] = []

        def mix(features: Tensor) -> Tensor:
            mixed.append(
                POLICIES["manifoldmix"](features, targets, alpha=self.alpha, generator=generator)
            )
            return mixed[0].inputs

        logits = model(inputs, mix=mix, mix_stage=stage)
        return logits, mixed[0]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- state


def _rng_state(generator: torch.Generator) -> dict[str, object]:
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }


def _restore_rng(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))


def _save_checkpoint(config: TrainConfig, state: dict) -> str:
    folder = Path(tempfile.mkdtemp(prefix="dmsweep-checkpoint-"))
    torch.save(state, folder / CHECKPOINT_FILE)
    (folder / "trial.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return str(folder)


def load_checkpoint(folder: str | Path) -> dict:
    """The state saved by the loop in a checkpoint folder."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {folder}: {CHECKPOINT_FILE} is missing")
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    source,
    transform: EvalTransform,
    ranks: _Ranks,
    batch_size: int,
) -> tuple[float, float]:
    model.eval()
    shard = torch.arange(ranks.rank, len(source), ranks.world_size)
    counts = torch.zeros(3, device=ranks.device, dtype=torch.long)
    for start in range(0, len(shard), batch_size):
        index = shard[start : start + batch_size]
        images = transform(source.read(index).to(ranks.device))
        labels = source.labels[index].to(ranks.device)
        counts[:2] += topk_correct(model(images), labels, ks=(1, 5))
        counts[2] += len(index)
    counts = _all_sum(counts, ranks).tolist()
    return 100.0 * counts[0] / counts[2], 100.0 * counts[1] / counts[2]


def _fixed_mixed_batch(
    config: TrainConfig, source, transform: EvalTransform, device: torch.device
) -> MixedBatch:
    """A fixed mixed validation batch for the mixed top-1 / top-2 of Fig. 2 and 7.

    Mixed with the trial's policy where it mixes inputs, with Mixup otherwise (ManifoldMix,
    Mixup/CutMix switching, no mixing), always from the same seed, so epochs are comparable.
    """
    count = min(config.eval.mixed_batch, len(source))
    # A random draw: test splits are often stored class by class, and a batch of one class
    # would hold only same-class pairs, which the mixed accuracies leave out.
    index = torch.randperm(len(source), generator=torch.Generator().manual_seed(config.seed))
    index = index[:count].sort().values
    images = transform(source.read(index).to(device))
    labels = source.labels[index].to(device)
    policy = config.mixing.method
    if policy not in POLICIES or policy == "manifoldmix":
        policy = "mixup"
    generator = torch.Generator(device=device).manual_seed(config.seed)
    return POLICIES[policy](images, labels, alpha=config.mixing.alpha or 1.0, generator=generator)


# --------------------------------------------------------------------------- the loop


def _check_finite(losses: list[Tensor], first_step: int, epoch: int) -> None:
    if not losses:
        return
    finite = torch.isfinite(torch.stack(losses))
    if not bool(finite.all()):
        step = first_step + int((~finite).nonzero()[0])
        raise NonFiniteLossError(
            f"the training loss became {torch.stack(losses)[~finite][0].item()} at step {step} "
            f"(epoch {epoch + 1}); lower the learning rate or check the data"
        )


@dataclass
class Trial:
    """Everything one run builds before its first step, shared by ``run`` and the benchmarks."""

    config: TrainConfig
    recipe: Recipe
    ranks: _Ranks
    epochs: int
    rank_batch: int
    train_set: ImageSource
    test_set: ImageSource
    labelled: Tensor
    model: nn.Module
    train_model: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: nn.Module | None
    scaler: torch.amp.GradScaler
    amp: bool
    augment: TrainAugment
    eval_transform: EvalTransform
    loss_fn: Objective
    mixer: _Mixer
    generator: torch.Generator
    mean: tuple[float, ...]
    std: tuple[float, ...]
    step: int = 0

    def epoch_indices(self, epoch: int) -> Tensor:
        """Labelled training images of this rank for ``epoch``, in training order."""
        order = epoch_order(
            len(self.labelled),
            epoch=epoch,
            # Spread the seeds: the sampler seeds with seed + epoch, which would make seed s + 1
            # replay seed s one epoch later.
            seed=self.config.seed * 1_000_003,
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            repeated_aug=self.recipe.repeated_aug,
            num_repeats=self.recipe.num_repeats,
        )
        return self.labelled[order]


def _open_data(config: TrainConfig) -> tuple[ImageSource, ImageSource]:
    data = config.data
    options = {
        "source": data.source,
        "root": data.root,
        "image_size": data.image_size,
        "seed": config.seed,
    }
    if data.name == "synthetic":
        options["synthetic"] = {
            "num_classes": data.num_classes,
            "images": data.synthetic_images,
        }
    train = open_dataset(
        data.name, "train", subset=data.subset, label_fraction=data.label_fraction, **options
    )
    test = open_dataset(data.name, "test", **options)
    if data.test_subset is not None:
        test = subset(test, data.test_subset, seed=config.seed)
    return train, test


def build_trial(config: TrainConfig) -> Trial:
    """Open the data, build model, optimiser, schedule and streams for ``config``."""
    ranks = _ranks(config)
    recipe = get_recipe(config.recipe, config.recipe_overrides)
    epochs = config.epochs or recipe.epochs
    batch_size = config.batch_size or recipe.batch_size
    if batch_size < 2 * ranks.world_size:
        raise ValueError(
            f"batch_size {batch_size} leaves fewer than 2 images for each of the "
            f"{ranks.world_size} ranks"
        )
    rank_batch = batch_size // ranks.world_size
    train_set, test_set = _open_data(config)
    labelled = (train_set.labels >= 0).nonzero().squeeze(1)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    options = dict(config.backbone.options)
    if recipe.drop_path and "drop_path_rate" not in options:
        options["drop_path_rate"] = recipe.drop_path
    model = build_backbone(
        config.backbone.name,
        len(train_set.classes),
        train_set.image_size,
        weights=config.backbone.weights,
        pretrained=config.backbone.pretrained,
        **options,
    ).to(ranks.device)
    train_model: nn.Module = model
    if ranks.world_size > 1:
        device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    optimizer = build_optimizer(model, recipe, batch_size)
    mean, std = mean_std(config.data.name)
    amp = recipe.amp and ranks.device.type == "cuda"
    generator = torch.Generator(device=ranks.device)
    generator.manual_seed(config.seed * 1_000_003 + ranks.rank)  # one stream per rank
    trial = Trial(
        config=config,
        recipe=recipe,
        ranks=ranks,
        epochs=epochs,
        rank_batch=rank_batch,
        train_set=train_set,
        test_set=test_set,
        labelled=labelled,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=None,  # needs the epoch length, set below
        ema=build_ema(model, recipe),
        scaler=torch.amp.GradScaler(ranks.device.type, enabled=amp),
        amp=amp,
        augment=TrainAugment(recipe, train_set.image_size, mean, std),
        eval_transform=EvalTransform(recipe, train_set.image_size, mean, std),
        loss_fn=objective(
            config.loss.name,
            **config.loss.hyperparameters(),
            label_smoothing=recipe.label_smoothing,
        ),
        mixer=_Mixer(config.mixing.method, config.mixing.alpha, recipe),
        generator=generator,
        mean=mean,
        std=std,
    )
    steps_per_epoch = math.ceil(len(trial.epoch_indices(0)) / rank_batch)
    trial.scheduler = build_scheduler(optimizer, recipe, steps_per_epoch, epochs)
    return trial


def train_step(trial: Trial, images: Tensor, targets: Tensor) -> Tensor:
    """One optimisation step on a uint8 batch: augment, mix, forward, loss, backward, update.

    Returns the loss, detached, without synchronising with the device.
    """
    device = trial.ranks.device
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    inputs = trial.augment(images, trial.generator)
    with torch.autocast(device.type, enabled=trial.amp):
        logits, batch = trial.mixer(trial.train_model, inputs, targets, trial.generator)
        loss = trial.loss_fn(logits, batch)
    trial.optimizer.zero_grad(set_to_none=True)
    trial.scaler.scale(loss).backward()
    if trial.recipe.grad_clip:
        trial.scaler.unscale_(trial.optimizer)
        nn.utils.clip_grad_norm_(trial.model.parameters(), trial.recipe.grad_clip)
    trial.scaler.step(trial.optimizer)
    trial.scaler.update()
    trial.scheduler.step()
    trial.step += 1
    if trial.ema is not None:
        trial.ema.update(trial.model, step=trial.step)
    return loss.detach().float()


def _train_epoch(trial: Trial, epoch: int) -> tuple[Tensor, int, float]:
    """Losses of every step, images trained on, and the learning rate of the last step."""
    trial.train_model.train()
    order = trial.epoch_indices(epoch)
    losses: list[Tensor] = []
    checked, images, lr = 0, 0, trial.optimizer.param_groups[0]["lr"]
    for start in range(0, len(order), trial.rank_batch):
        index = order[start : start + trial.rank_batch]
        if len(index) < 2:
            break  # batch norm cannot train on a single image
        lr = trial.optimizer.param_groups[0]["lr"]
        losses.append(train_step(trial, trial.train_set.read(index), trial.train_set.labels[index]))
        images += len(index)
        if len(losses) - checked >= FINITE_CHECK_EVERY:
            _check_finite(losses[checked:], trial.step - len(losses) + checked + 1, epoch)
            checked = len(losses)
    if not losses:
        raise ValueError(f"epoch {epoch + 1} has no batch of 2 or more labelled images to train on")
    _check_finite(losses[checked:], trial.step - len(losses) + checked + 1, epoch)
    return torch.stack(losses), images, lr


def _rng_states_of_all_ranks(trial: Trial) -> list[dict[str, object]]:
    """Every rank's random streams, gathered (a collective: every rank calls it)."""
    mine = _rng_state(trial.generator)
    if trial.ranks.world_size == 1:
        return [mine]
    gathered: list[dict[str, object] | None] = [None] * trial.ranks.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def _state(trial: Trial, epoch: int, history: list[float], rng: list[dict[str, object]]) -> dict:
    return {
        "model": trial.model.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "scaler": trial.scaler.state_dict(),
        "ema": trial.ema.state_dict() if trial.ema is not None else None,
        "epoch": epoch,
        "step": trial.step,
        "history": history,
        "rng": rng,  # one entry per rank
    }


def _restore(trial: Trial, state: dict) -> tuple[int, list[float]]:
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    trial.scaler.load_state_dict(state["scaler"])
    if trial.ema is not None:
        trial.ema.load_state_dict(state["ema"])
    trial.step = state["step"]
    if len(state["rng"]) != trial.ranks.world_size:
        raise ValueError(
            f"the checkpoint was written by {len(state['rng'])} rank(s); resuming it on "
            f"{trial.ranks.world_size} would not continue the same run"
        )
    _restore_rng(state["rng"][trial.ranks.rank], trial.generator)
    return state["epoch"], list(state["history"])


def run(
    config: TrainConfig, report: Report, resume_from: str | Path | None = None
) -> dict[str, float]:
    """Train one trial; return the metrics of the last epoch (with the run's summaries)."""
    trial = build_trial(config)
    ranks = trial.ranks
    fixed_mixed = _fixed_mixed_batch(config, trial.test_set, trial.eval_transform, ranks.device)
    start_epoch, history = 0, []
    if resume_from is not None:
        start_epoch, history = _restore(trial, load_checkpoint(resume_from))

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, trial.epochs):
        started = time.perf_counter()
        losses, images, lr = _train_epoch(trial, epoch)
        _average_buffers(trial.model, ranks)
        if ranks.device.type == "cuda":
            torch.cuda.synchronize(ranks.device)
        epoch_time = time.perf_counter() - started
        totals = torch.stack(
            (
                losses.sum(),
                torch.tensor(float(len(losses)), device=losses.device),
                torch.tensor(float(images), device=losses.device),
            )
        )
        loss_sum, steps, seen = _all_sum(totals, ranks).tolist()
        top1, top5 = _evaluate(
            trial.model, trial.test_set, trial.eval_transform, ranks, max(trial.rank_batch, 256)
        )
        with torch.no_grad():
            mixed = mixed_correct(
                trial.model(fixed_mixed.inputs), fixed_mixed.y_a, fixed_mixed.y_b
            ).tolist()
        history.append(top1)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / steps,
            "val_top1": top1,
            "val_top5": top5,
            "mixed_top1": 100.0 * mixed[0] / max(mixed[2], 1),
            "mixed_top2": 100.0 * mixed[1] / max(mixed[2], 1),
            "lr": lr,
            "epoch_time_s": epoch_time,
            "images_per_s": seen / epoch_time,
        }
        last = epoch + 1 == trial.epochs
        if last:
            metrics["top1_median_last10"] = median_of_last(history, 10)
            metrics["top1_best"] = max(history)
            if config.eval.fgsm:
                metrics["fgsm_error"] = _fgsm(trial)
        checkpoint = None
        if last or (epoch + 1) % config.checkpoint_every == 0:
            rng = _rng_states_of_all_ranks(trial)
            if ranks.is_main:
                checkpoint = _save_checkpoint(config, _state(trial, epoch + 1, history, rng))
        try:
            report(metrics, checkpoint)
        finally:
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics


def _fgsm(trial: Trial) -> float:
    ranks, source = trial.ranks, trial.test_set
    mean = torch.tensor(trial.mean, device=ranks.device).view(1, -1, 1, 1)
    std = torch.tensor(trial.std, device=ranks.device).view(1, -1, 1, 1)

    def normalise(pixels: Tensor) -> Tensor:
        return (pixels - mean) / std

    shard = torch.arange(ranks.rank, len(source), ranks.world_size)
    counts = torch.zeros(2, device=ranks.device, dtype=torch.long)
    for start in range(0, len(shard), 256):
        index = shard[start : start + 256]
        pixels = source.read(index).to(ranks.device).float() / 255
        labels = source.labels[index].to(ranks.device)
        counts += fgsm_error(
            trial.model, pixels, labels, normalise, epsilon=trial.config.eval.fgsm_epsilon
        )
    counts = _all_sum(counts, ranks).tolist()
    return 100.0 * counts[0] / counts[1]
