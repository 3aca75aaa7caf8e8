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
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from trainers.augment import EvalTransform, TrainAugment, mean_std
from trainers.backbones import build_backbone
from trainers.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from trainers.config import TrainConfig
from trainers.data import ImageSource
from trainers.data.loader import SampleLoader, default_loader_workers, in_memory
from trainers.distributed import Ranks, all_sum, average_buffers, gather, trial_ranks
from trainers.evaluate import accuracy, fgsm_error_rate, fixed_mixed_batch, mixed_accuracy
from trainers.finite import FINITE_CHECK_EVERY, NonFiniteLossError, check_finite
from trainers.metrics import median_of_last
from trainers.mixing import MixedBatch
from trainers.mixing.learned import LEARNED_POLICIES, LearnedMixing
from trainers.mixing.methods import MethodMixer
from trainers.objectives import Objective, objective
from trainers.optim import build_ema, build_optimizer, build_scheduler
from trainers.order import epoch_order
from trainers.recipes import Recipe
from trainers.splits import open_splits
from trainers.ssl.loop import run_semi_supervised
from trainers.transforms import train_sample_transform

__all__ = ["NonFiniteLossError", "Trial", "build_trial", "load_checkpoint", "run", "train_step"]

Report = Callable[[dict[str, float], str | None], None]


@dataclass
class Trial:
    """Everything one run builds before its first step, shared by ``run`` and the benchmarks."""

    config: TrainConfig
    recipe: Recipe
    ranks: Ranks
    epochs: int
    rank_batch: int
    train_set: ImageSource
    test_set: ImageSource
    labelled: Tensor
    model: nn.Module
    train_model: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ModelEmaV3 | None
    scaler: torch.amp.GradScaler
    amp: bool
    augment: TrainAugment
    eval_transform: EvalTransform
    loss_fn: Objective
    mixer: MethodMixer
    generator: torch.Generator  # on the device: augmentation and mixing
    choices: torch.Generator  # on the CPU: per-batch choices (policy, ManifoldMix stage)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    step: int = 0
    # The per-sample path (photos, RandAugment): crops made in DataLoader workers; None: the
    # batched path, crops made on the device from ``train_set.read``.
    loader: SampleLoader | None = None
    # AutoMix / SAMix: the Mix Block, its optimiser and the momentum encoder; None otherwise.
    learned: LearnedMixing | None = None

    def epoch_indices(self, epoch: int) -> Tensor:
        """Labelled training images of this rank for ``epoch``, in training order."""
        order = _rank_order(self.config, self.recipe, self.ranks, len(self.labelled), epoch)
        return self.labelled[order]

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The trial's own random streams, by name (saved in checkpoints)."""
        return {"device": self.generator, "choices": self.choices}


def _rank_order(
    config: TrainConfig, recipe: Recipe, ranks: Ranks, labelled: int, epoch: int
) -> Tensor:
    """Positions among the ``labelled`` images that this rank trains on in ``epoch``, in order."""
    return epoch_order(
        labelled,
        epoch=epoch,
        # Spread the seeds: the sampler seeds with seed + epoch, which would make seed s + 1
        # replay seed s one epoch later.
        seed=config.seed * 1_000_003,
        rank=ranks.rank,
        world_size=ranks.world_size,
        repeated_aug=recipe.repeated_aug,
        num_repeats=recipe.num_repeats,
    )


def _sample_loader(
    config: TrainConfig, recipe: Recipe, train: ImageSource, seed: int, ranks: Ranks
) -> SampleLoader | None:
    """The per-sample loader where the data or the recipe need one, else None.

    Per sample: images that decode one by one (photos kept as they are: RandomResizedCrop from
    the whole original, Table 10) and recipes with RandAugment (a PIL operation per image).
    """
    if in_memory(train) and recipe.randaugment is None:
        return None
    mean, _ = mean_std(config.data.name)
    workers = config.data.loader_workers
    return SampleLoader(
        train,
        train_sample_transform(recipe, train.image_size, mean),
        seed=seed,
        workers=default_loader_workers() if workers is None else workers,
        pin_memory=ranks.device.type == "cuda",
    )


def _puzzlemix_workers(config: TrainConfig) -> int:
    """Graph-cut processes of a PuzzleMix trial: the setting, else the CPUs less one (0 else)."""
    if config.mixing.method != "puzzlemix":
        return 0
    workers = config.mixing.puzzlemix_workers
    return default_loader_workers() if workers is None else workers


def build_trial(config: TrainConfig) -> Trial:
    """Open the data, build model, optimiser, schedule and streams for ``config``."""
    batch_size = config.global_batch_size()
    ranks, rank_batch = trial_ranks(config.device, batch_size)
    recipe = config.recipe_settings()
    epochs = config.epochs_to_train()
    train_set, test_set, test_cropped = open_splits(config, recipe)
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
    steps_per_epoch = math.ceil(
        len(_rank_order(config, recipe, ranks, len(labelled), 0)) / rank_batch
    )
    mean, std = mean_std(config.data.name)
    learned = None
    if config.mixing.method in LEARNED_POLICIES:
        assert config.mixing.alpha is not None  # MixingConfig requires it of every policy
        learned = LearnedMixing(
            config.mixing.method,
            model,
            dataset=config.data.name,
            image_size=train_set.image_size,
            alpha=config.mixing.alpha,
            lambda_mode=config.mixing.lambda_mode,
            total_steps=steps_per_epoch * epochs,
            # A spec's mixing settings reach every cell; the balance is SAMix's alone.
            samix_balance=config.mixing.samix_balance if config.mixing.method == "samix" else None,
        )
    amp = recipe.amp and ranks.device.type == "cuda"
    stream_seed = config.seed * 1_000_003 + ranks.rank  # one stream per rank
    generator = torch.Generator(device=ranks.device).manual_seed(stream_seed)
    return Trial(
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
        scheduler=build_scheduler(optimizer, recipe, steps_per_epoch, epochs),
        ema=build_ema(model, recipe),
        scaler=torch.amp.GradScaler(ranks.device.type, enabled=amp),
        amp=amp,
        augment=TrainAugment(recipe, train_set.image_size, mean, std),
        eval_transform=EvalTransform(recipe, train_set.image_size, mean, std, cropped=test_cropped),
        loss_fn=objective(
            config.loss.name,
            **config.loss.hyperparameters(),
            **config.loss.interpolation_settings(),
            label_smoothing=recipe.label_smoothing,
        ),
        mixer=MethodMixer(
            config.mixing.method,
            config.mixing.alpha,
            mixup_alpha=recipe.mixup_alpha,
            cutmix_alpha=recipe.cutmix_alpha,
            switch_prob=recipe.switch_prob,
            lambda_mode=config.mixing.lambda_mode,
            saliency_detector=config.mixing.saliency_detector,
            mean=mean,
            std=std,
            puzzlemix_workers=_puzzlemix_workers(config),
        ),
        generator=generator,
        choices=torch.Generator().manual_seed(stream_seed),
        mean=mean,
        std=std,
        loader=_sample_loader(config, recipe, train_set, stream_seed, ranks),
        learned=learned,
    )


def train_step(
    trial: Trial, images: Tensor, targets: Tensor, cropped_seed: int | None = None
) -> Tensor:
    """One optimisation step on a uint8 batch: augment, mix, forward, loss, backward, update.

    ``cropped_seed``: the batch comes cropped from the loader workers with this seed for its
    device-side draws (only normalisation and random erasing are left). Returns the loss,
    detached, without synchronising with the device.
    """
    device = trial.ranks.device
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if cropped_seed is None:
        inputs = trial.augment(images, trial.generator)
    else:
        inputs = trial.augment.finish(images, cropped_seed)
    with torch.autocast(device.type, enabled=trial.amp):
        if trial.learned is None:
            logits, batch = trial.mixer(
                trial.train_model, inputs, targets, trial.generator, trial.choices
            )
            loss = trial.loss_fn(logits, batch)
            optimised = loss
        else:
            learned = trial.learned.mixing(
                trial.train_model, inputs, targets, trial.generator, trial.loss_fn
            )
            objective_loss = trial.loss_fn(learned.logits, learned.batch)
            # One backward trains both: the objective reaches only the backbone, the Mix
            # Block's loss only the Mix Block (trainers.mixing.learned).
            optimised = objective_loss + learned.auxiliary
            # The objective is what the run reports; 0 x a non-finite auxiliary loss is NaN,
            # so the finite check stops a run whose Mix Block diverged as well.
            loss = objective_loss + 0.0 * learned.auxiliary.detach()
    trial.optimizer.zero_grad(set_to_none=True)
    trial.scaler.scale(optimised).backward()
    if trial.learned is not None:
        trial.learned.average_gradients(trial.ranks)
    if trial.recipe.grad_clip:
        trial.scaler.unscale_(trial.optimizer)
        clipped = list(trial.model.parameters())
        if trial.learned is not None:
            trial.scaler.unscale_(trial.learned.optimizer)
            clipped += trial.learned.mix_block.parameters()
        nn.utils.clip_grad_norm_(clipped, trial.recipe.grad_clip)
    trial.scaler.step(trial.optimizer)
    if trial.learned is not None:
        trial.learned.step(trial.scaler, trial.model, trial.step)
    trial.scaler.update()
    trial.scheduler.step()
    trial.step += 1
    if trial.ema is not None:
        trial.ema.update(trial.model, step=trial.step)
    return loss.detach().float()


def _train_epoch(trial: Trial, epoch: int) -> tuple[Tensor, int, float]:
    """Losses of every step, images trained on, and the learning rate of the last step."""
    trial.train_model.train()
    if trial.learned is not None:
        trial.learned.train()
    order = trial.epoch_indices(epoch)
    losses: list[Tensor] = []
    checked, images, lr = 0, 0, trial.optimizer.param_groups[0]["lr"]
    for batch, targets, seed in _batches(trial, epoch, order):
        lr = trial.optimizer.param_groups[0]["lr"]
        losses.append(train_step(trial, batch, targets, seed))
        images += len(targets)
        if len(losses) - checked >= FINITE_CHECK_EVERY:
            check_finite(
                losses[checked:], trial.step - len(losses) + checked + 1, f" (epoch {epoch + 1})"
            )
            checked = len(losses)
    if not losses:
        raise ValueError(f"epoch {epoch + 1} has no batch of 2 or more labelled images to train on")
    check_finite(losses[checked:], trial.step - len(losses) + checked + 1, f" (epoch {epoch + 1})")
    return torch.stack(losses), images, lr


def _batches(
    trial: Trial, epoch: int, order: Tensor
) -> Iterator[tuple[Tensor, Tensor, int | None]]:
    """(uint8 images, labels, seed of a pre-cropped batch or None) for each step of an epoch."""
    if trial.loader is not None:
        for loaded in trial.loader.epoch(epoch, order, trial.rank_batch):
            yield loaded.images, loaded.labels, loaded.seed
        return
    for start in range(0, len(order), trial.rank_batch):
        index = order[start : start + trial.rank_batch]
        if len(index) < 2:
            break  # batch norm cannot train on a single image
        yield trial.train_set.read(index), trial.train_set.labels[index], None


def _state(
    trial: Trial,
    epoch: int,
    history: list[float],
    ema_history: list[float],
    rng: list[dict[str, object]],
) -> dict:
    return {
        "model": trial.model.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "scaler": trial.scaler.state_dict(),
        "ema": trial.ema.state_dict() if trial.ema is not None else None,
        "epoch": epoch,
        "step": trial.step,
        "history": history,
        "ema_history": ema_history,
        "rng": rng,  # one entry per rank
        "learned": trial.learned.checkpoint() if trial.learned is not None else None,
    }


def _restore(trial: Trial, state: dict) -> tuple[int, list[float], list[float]]:
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    trial.scaler.load_state_dict(state["scaler"])
    if trial.ema is not None:
        trial.ema.load_state_dict(state["ema"])
    if trial.learned is not None:
        trial.learned.restore(state["learned"])
    trial.step = state["step"]
    if len(state["rng"]) != trial.ranks.world_size:
        raise ValueError(
            f"the checkpoint was written by {len(state['rng'])} rank(s); resuming it on "
            f"{trial.ranks.world_size} would not continue the same run"
        )
    restore_rng(state["rng"][trial.ranks.rank], trial.generators)
    # A checkpoint written before the EMA was evaluated has no EMA history: it starts empty.
    return state["epoch"], list(state["history"]), list(state.get("ema_history", []))


def run(
    config: TrainConfig, report: Report, resume_from: str | Path | None = None
) -> dict[str, float]:
    """Train one trial; return the metrics of the last epoch (with the run's summaries).

    The one training loop: ``dmsweep train`` runs it in-process, a sweep in each trial's process
    (or each Ray Train worker of a several-worker trial).
    It knows neither Ray nor MLflow.

    Args:
        config: the trial (data, backbone, mixing, loss, recipe, seed; ``TrainConfig``).
        report: called after every epoch with that epoch's metrics (``train_loss``, ``val_top1``,
            ``lr``, ...; the last epoch adds ``trainers.vocabulary.SUMMARY_METRICS``) and the
            folder of a checkpoint written for it, or None. Where the recipe keeps an EMA of the
            weights (DeiT, Table 10), the EMA is evaluated too: ``val_top1_ema`` each epoch,
            ``top1_ema_best`` at the end.
        resume_from: a checkpoint folder ``report`` was given; training goes on after its epoch.

    Example::

        config = load_train_config("trial.yaml")
        final = run(config, lambda metrics, checkpoint: print(metrics["val_top1"]))
        print(final["top1_median_last10"])

    """
    if config.algorithm != "supervised":
        # Semi-supervised training counts steps and has two streams: its own loop.
        return run_semi_supervised(
            config, report, None if resume_from is None else str(resume_from)
        )
    trial = build_trial(config)
    ranks = trial.ranks
    fixed_mixed = fixed_mixed_batch(
        trial.test_set,
        trial.eval_transform,
        method=config.mixing.method,
        alpha=config.mixing.alpha,
        count=config.eval.mixed_batch,
        seed=config.seed,
        device=ranks.device,
    )
    start_epoch = 0
    history: list[float] = []
    ema_history: list[float] = []
    if resume_from is not None:
        start_epoch, history, ema_history = _restore(trial, load_checkpoint(resume_from))

    try:
        return _train_epochs(trial, start_epoch, history, ema_history, fixed_mixed, report)
    finally:
        if trial.loader is not None:
            trial.loader.close()  # an epoch started ahead, when the trial stops after it


def _train_epochs(
    trial: Trial,
    start_epoch: int,
    history: list[float],
    ema_history: list[float],
    fixed_mixed: MixedBatch,
    report: Report,
) -> dict[str, float]:
    """Epochs ``start_epoch`` to the last: train, evaluate, checkpoint, report."""
    config, ranks = trial.config, trial.ranks
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, trial.epochs):
        started = time.perf_counter()
        losses, images, lr = _train_epoch(trial, epoch)
        average_buffers(trial.model, ranks)
        if trial.learned is not None:
            average_buffers(trial.learned, ranks)  # the encoder's and the Mix Block's norms
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
        loss_sum, steps, seen = all_sum(totals, ranks).tolist()
        if trial.loader is not None and epoch + 1 < trial.epochs:
            # The next epoch's images are decoded and cropped while this one is evaluated.
            trial.loader.prefetch(epoch + 1, trial.epoch_indices(epoch + 1), trial.rank_batch)
        top1, top5 = accuracy(
            trial.model, trial.test_set, trial.eval_transform, ranks, max(trial.rank_batch, 256)
        )
        mixed_top1, mixed_top2 = mixed_accuracy(trial.model, fixed_mixed)
        history.append(top1)
        if trial.ema is not None:
            ema_top1, _ = accuracy(
                trial.ema.module,
                trial.test_set,
                trial.eval_transform,
                ranks,
                max(trial.rank_batch, 256),
            )
            ema_history.append(ema_top1)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / steps,
            "val_top1": top1,
            "val_top5": top5,
            "mixed_top1": mixed_top1,
            "mixed_top2": mixed_top2,
            "lr": lr,
            "epoch_time_s": epoch_time,
            "images_per_s": seen / epoch_time,
        }
        if ranks.device.type == "cuda":
            # What the trial needs of its GPU: the figure resources.gpus_per_worker is chosen by
            # (README, "Several trials per GPU").
            metrics["gpu_memory_peak_gib"] = torch.cuda.max_memory_reserved(ranks.device) / 2**30
        if ema_history:
            metrics["val_top1_ema"] = ema_history[-1]
        last = epoch + 1 == trial.epochs
        if last:
            metrics["top1_median_last10"] = median_of_last(history, 10)
            metrics["top1_best"] = max(history)
            if ema_history:
                metrics["top1_ema_best"] = max(ema_history)
            if config.eval.fgsm:
                metrics["fgsm_error"] = fgsm_error_rate(
                    trial.model,
                    trial.test_set,
                    trial.mean,
                    trial.std,
                    epsilon=config.eval.fgsm_epsilon,
                    ranks=ranks,
                )
        checkpoint = None
        if last or (epoch + 1) % config.checkpoint_every == 0:
            rng = gather(rng_state(trial.generators), ranks)  # every rank's streams
            if ranks.is_main:
                checkpoint = save_checkpoint(
                    _state(trial, epoch + 1, history, ema_history, rng),
                    config.model_dump(mode="json"),
                )
        try:
            report(metrics, checkpoint)
        finally:
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics
