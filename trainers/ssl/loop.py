"""The semi-supervised loop (Sec. 4.4, Table 7): step-based training with an EMA that is evaluated.

As TorchSSL trains: each step draws ``B`` labelled images and ``mu * B`` unlabelled ones
(:mod:`trainers.ssl.streams`), the algorithm computes the loss from their views
(:mod:`trainers.ssl.views`, :mod:`trainers.ssl.base`), SGD steps, the lr follows the recipe's
schedule per step, and an EMA of the weights follows the model. Every ``eval_every`` steps the
model and its EMA are evaluated and ``report`` is called: one interval is one "epoch" of the
metrics contract (``epoch``, ``train_loss``, ``val_top1``, ``val_top1_ema``, ``lr``, ...), plus
the step, the parts of the loss, the mask rate (the mean of the algorithm's mask over the
interval's unlabelled images: the share above the threshold for the thresholding algorithms)
and the pseudo-label accuracy (the mask-weighted share of unlabelled images whose pseudo-label
is their true label, which the run keeps for this and never trains on). The last interval adds
``top1_best``, ``top1_ema_best`` (the number Table 7 is compared with: the paper reports the best
top-1, TorchSSL evaluates the EMA) and ``top1_median_last10``.

Labelled images: ``data.label_fraction`` of the train split, class-balanced and fixed by the
seed (:func:`trainers.data.sampling.label_fraction`). Unlabelled images: the whole train split,
labelled images included, as TorchSSL's data sets are built (``include_lb_to_ulb``). The
transfer algorithms of Table 6 (:mod:`trainers.transfer`) take the training images that are not
labelled instead, as Self-Tuning's ``unlabeled_train`` split is the rest of the training set.

The transfer recipe keeps no EMA (Self-Tuning evaluates the model itself): then no
``val_top1_ema`` and no ``top1_ema_best`` are reported. Its new classifier learns at
``recipe.head_lr_scale`` times the lr (:func:`trainers.optim.with_head_lr`), everything else
(the pretrained body, Self-Tuning's projector, Co-Tuning's source head, which tllib and
Co-Tuning train at the backbone's lr) at the lr. Co-Tuning's category relationship is learnt
from the labelled images before the first step (:mod:`trainers.transfer.relationship`).

Under ``torch.distributed`` every rank takes its share of each step's global batches; gradients
are averaged across ranks after the backward (the algorithms run several forwards a step, which
DistributedDataParallel's hooks do not allow), and batch-norm statistics before each
evaluation. Resuming continues the same run: both streams are functions of the step, and the
generator, optimiser, schedule, EMA and algorithm state are in the checkpoint.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from trainers.augment import EvalTransform, mean_std
from trainers.backbones import build_backbone
from trainers.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from trainers.config import TrainConfig
from trainers.data import ImageSource
from trainers.data.sampling import label_fraction
from trainers.distributed import Ranks, all_sum, average_buffers, gather, trial_ranks
from trainers.evaluate import accuracy
from trainers.finite import FINITE_CHECK_EVERY, check_finite
from trainers.metrics import median_of_last
from trainers.optim import build_optimizer, build_scheduler, with_head_lr
from trainers.recipes import Recipe
from trainers.splits import open_splits
from trainers.ssl.algorithms import build_algorithm
from trainers.ssl.base import SemiSupervisedAlgorithm, SemiSupervisedBatch
from trainers.ssl.features import classifier_layer
from trainers.ssl.streams import Stream
from trainers.ssl.views import Views
from trainers.transfer.algorithms import new_head
from trainers.transfer.co_tuning import CoTuning
from trainers.transfer.relationship import learn_relationship
from trainers.vocabulary import TRANSFER

Report = Callable[[dict[str, float], str | None], None]


@dataclass
class SemiSupervisedTrial:
    """Everything a semi-supervised run builds before its first step."""

    config: TrainConfig
    recipe: Recipe
    ranks: Ranks
    batch: int  # labelled images per rank and step
    unlabelled_batch: int  # unlabelled images per rank and step
    train_set: ImageSource  # every training image, labels as stored (for the metrics only)
    labelled: Tensor  # indices of the labelled images
    unlabelled: Tensor  # indices of the images the unlabelled stream draws from
    test_set: ImageSource
    model: nn.Module
    algorithm: SemiSupervisedAlgorithm
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ModelEmaV3 | None  # None where the recipe keeps none (transfer)
    views: Views
    eval_transform: EvalTransform
    generator: torch.Generator  # on the device: views and the algorithm's draws
    host_generator: torch.Generator  # on the CPU: the strong views' seeds
    labelled_stream: Stream
    unlabelled_stream: Stream | None  # None where there is no unlabelled image
    step: int = 0

    @property
    def total_steps(self) -> int:
        """Steps of the whole run."""
        return self.config.semi_supervised.steps

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The run's own random streams, by name (saved in checkpoints)."""
        return {"device": self.generator, "host": self.host_generator}

    @property
    def parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: the model's and the algorithm's own (a rotation head)."""
        return [*self.model.parameters(), *self.algorithm.parameters()]


class _Trained(nn.Module):
    """The model and the algorithm's own parameters, for one optimiser over both."""

    def __init__(self, model: nn.Module, algorithm: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.algorithm = algorithm


def build_semi_supervised_trial(config: TrainConfig) -> SemiSupervisedTrial:
    """Open the data, draw the labelled images, build model, algorithm, optimiser and EMA."""
    batch_size = config.global_batch_size()
    ranks, rank_batch = trial_ranks(config.device, batch_size)
    recipe = config.recipe_settings()
    train_set, test_set, test_cropped = open_splits(config, recipe, keep_labels=True)
    fraction = config.data.label_fraction
    kept = train_set if fraction is None else label_fraction(train_set, fraction, seed=config.seed)
    labelled = (kept.labels >= 0).nonzero().squeeze(1)
    if config.algorithm in TRANSFER:  # Self-Tuning's unlabeled_train: the rest
        unlabelled = (kept.labels < 0).nonzero().squeeze(1)
    else:  # TorchSSL's include_lb_to_ulb: every training image
        unlabelled = torch.arange(len(train_set))
    classes = len(train_set.classes)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_backbone(
        config.backbone.name,
        classes,
        train_set.image_size,
        weights=config.backbone.weights,
        pretrained=config.backbone.pretrained,
        **config.backbone.options,
    ).to(ranks.device)
    if config.algorithm in TRANSFER:
        new_head(classifier_layer(model))
    algorithm = build_algorithm(config, model, classes, len(train_set)).to(ranks.device)
    optimizer = with_head_lr(
        build_optimizer(_Trained(model, algorithm), recipe, batch_size),
        classifier_layer(model).parameters(),
        recipe.head_lr_scale,
    )
    steps = config.semi_supervised.steps
    mean, std = mean_std(config.data.name)
    eval_transform = EvalTransform(recipe, train_set.image_size, mean, std, cropped=test_cropped)
    if isinstance(algorithm, CoTuning):
        # The training squares through the evaluation view (centre crop), as Co-Tuning predicts.
        train_view = EvalTransform(recipe, train_set.image_size, mean, std)
        learn_relationship(
            algorithm, model, train_set, labelled, train_view, ranks, max(rank_batch, 256)
        )
    unlabelled_batch = rank_batch * config.unlabelled_ratio()
    stream_seed = config.seed * 1_000_003
    return SemiSupervisedTrial(
        config=config,
        recipe=recipe,
        ranks=ranks,
        batch=rank_batch,
        unlabelled_batch=unlabelled_batch,
        train_set=train_set,
        labelled=labelled,
        unlabelled=unlabelled,
        test_set=test_set,
        model=model,
        algorithm=algorithm,
        optimizer=optimizer,
        # One "epoch" of one step: a step schedule's milestone fractions fall on steps.
        scheduler=build_scheduler(optimizer, recipe, 1, steps),
        # Weights averaged, batch-norm statistics copied from the model (TorchSSL's EMA).
        ema=None
        if recipe.ema_decay is None
        else ModelEmaV3(model, decay=recipe.ema_decay, exclude_buffers=True),
        views=Views(
            train_set.image_size,
            mean,
            std,
            crop=recipe.train_crop,
            rrc_scale=recipe.rrc_scale,
        ),
        eval_transform=eval_transform,
        generator=torch.Generator(device=ranks.device).manual_seed(stream_seed + ranks.rank),
        host_generator=torch.Generator().manual_seed(stream_seed + ranks.rank),
        labelled_stream=Stream(len(labelled), stream_seed + 1),
        # None only where there is no image to draw (a transfer run that keeps every label).
        unlabelled_stream=Stream(len(unlabelled), stream_seed + 2) if len(unlabelled) else None,
    )


@dataclass(frozen=True)
class StepRecord:
    """What one step leaves for the interval's metrics, all detached on the device."""

    loss: Tensor
    supervised: Tensor
    unsupervised: Tensor
    masked: Tensor  # sum of the mask over the unlabelled images
    correct: Tensor  # mask-weighted count of right pseudo-labels
    unlabelled: int


def _average_gradients(parameters: list[nn.Parameter], ranks: Ranks) -> None:
    if ranks.world_size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(ranks.world_size)


def _share_per_image_state(algorithm: SemiSupervisedAlgorithm, index: Tensor, ranks: Ranks) -> None:
    """Each rank's entries of the step, written into every rank's per-image buffers."""
    if ranks.world_size == 1 or not algorithm.per_image_buffers:
        return
    indices = [torch.empty_like(index) for _ in range(ranks.world_size)]
    dist.all_gather(indices, index)
    every = torch.cat(indices)
    for name in algorithm.per_image_buffers:
        buffer = getattr(algorithm, name)
        values = [torch.empty_like(buffer[index]) for _ in range(ranks.world_size)]
        dist.all_gather(values, buffer[index].contiguous())
        buffer[every] = torch.cat(values)


def average_statistics(trial: SemiSupervisedTrial) -> None:
    """Batch-norm statistics averaged across ranks, before an evaluation and its checkpoint.

    The model's and its EMA's, and those of the algorithm's own networks (Self-Tuning's key
    encoder, which normalises each rank's keys with their own batch). Only batch-norm modules
    of the algorithm: its other buffers (queues, memories) are the same on every rank already,
    and averaging them could round them.
    """
    ranks = trial.ranks
    average_buffers(trial.model, ranks)
    if trial.ema is not None:
        average_buffers(trial.ema.module, ranks)
    for module in trial.algorithm.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            average_buffers(module, ranks)


def semi_supervised_step(trial: SemiSupervisedTrial) -> StepRecord:
    """One optimisation step: draw both batches, their views, the algorithm's loss, update."""
    device, ranks = trial.ranks.device, trial.ranks
    positions = trial.labelled_stream.batch(trial.step, trial.batch, ranks.rank, ranks.world_size)
    labelled = trial.labelled[positions]
    unlabelled = torch.empty(0, dtype=torch.long)
    views: tuple[Tensor, ...] = ()
    generator = trial.generator
    labelled_images = trial.train_set.read(labelled).to(device, non_blocking=True)
    if trial.unlabelled_batch:
        # TrainConfig refuses an unlabelled batch where every label is kept.
        assert trial.unlabelled_stream is not None
        unlabelled = trial.unlabelled[
            trial.unlabelled_stream.batch(
                trial.step, trial.unlabelled_batch, ranks.rank, ranks.world_size
            )
        ]
        images = trial.train_set.read(unlabelled)
        host = trial.host_generator
        views = tuple(trial.views(images, v, generator, host) for v in trial.algorithm.views)
    batch = SemiSupervisedBatch(
        labelled=trial.views.weak(labelled_images, generator),
        targets=trial.train_set.labels[labelled].to(device, non_blocking=True),
        unlabelled=views,
        unlabelled_index=unlabelled.to(device, non_blocking=True),
        step=trial.step,
        total_steps=trial.total_steps,
    )
    trial.model.train()
    trial.algorithm.train()
    out = trial.algorithm(trial.model, batch, generator)
    trial.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    _average_gradients(trial.parameters, ranks)
    if trial.recipe.grad_clip:
        nn.utils.clip_grad_norm_(trial.parameters, trial.recipe.grad_clip)
    trial.optimizer.step()
    trial.scheduler.step()
    _share_per_image_state(trial.algorithm, batch.unlabelled_index, ranks)
    trial.step += 1
    if trial.ema is not None:
        trial.ema.update(trial.model, step=trial.step)
    truth = trial.train_set.labels[unlabelled].to(device, non_blocking=True)
    mask = out.mask.detach().float()
    return StepRecord(
        loss=out.loss.detach().float(),
        supervised=out.supervised.detach().float(),
        unsupervised=out.unsupervised.detach().float(),
        masked=mask.sum(),
        correct=(mask * (out.pseudo_labels == truth).float()).sum(),
        unlabelled=len(unlabelled),
    )


def _train_interval(trial: SemiSupervisedTrial, end: int) -> dict[str, float]:
    """Steps up to ``end``; the interval's loss parts, mask rate and pseudo-label accuracy."""
    records: list[StepRecord] = []
    checked = 0
    first = trial.step
    while trial.step < end:
        records.append(semi_supervised_step(trial))
        if len(records) - checked >= FINITE_CHECK_EVERY:
            check_finite([r.loss for r in records[checked:]], first + checked)
            checked = len(records)
    check_finite([r.loss for r in records[checked:]], first + checked)
    device = trial.ranks.device
    totals = torch.stack(
        [
            torch.stack([r.loss for r in records]).sum(),
            torch.stack([r.supervised for r in records]).sum(),
            torch.stack([r.unsupervised for r in records]).sum(),
            torch.stack([r.masked for r in records]).sum(),
            torch.stack([r.correct for r in records]).sum(),
            torch.tensor(float(sum(r.unlabelled for r in records)), device=device),
            torch.tensor(float(len(records)), device=device),
        ]
    )
    loss, supervised, unsupervised, masked, correct, unlabelled, steps = all_sum(
        totals, trial.ranks
    ).tolist()
    parts = {
        "train_loss": loss / steps,
        "supervised_loss": supervised / steps,
        "unsupervised_loss": unsupervised / steps,
    }
    if unlabelled > 0:  # labelled_only draws none
        parts["mask_rate"] = masked / unlabelled
    if masked > 0:  # else no pseudo-label was used, and none can be right or wrong
        parts["pseudo_label_acc"] = 100.0 * correct / masked
    return parts


def _state(trial: SemiSupervisedTrial, interval: int, history: dict[str, list[float]], rng):
    return {
        "model": trial.model.state_dict(),
        "algorithm": trial.algorithm.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "ema": None if trial.ema is None else trial.ema.state_dict(),
        "epoch": interval,
        "step": trial.step,
        "history": history,
        "rng": rng,  # one entry per rank
    }


def _restore(trial: SemiSupervisedTrial, state: dict) -> tuple[int, dict[str, list[float]]]:
    if len(state["rng"]) != trial.ranks.world_size:
        raise ValueError(
            f"the checkpoint was written by {len(state['rng'])} rank(s); resuming it on "
            f"{trial.ranks.world_size} would not continue the same run"
        )
    trial.model.load_state_dict(state["model"])
    trial.algorithm.load_state_dict(state["algorithm"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    if trial.ema is not None:
        trial.ema.load_state_dict(state["ema"])
    trial.step = state["step"]
    restore_rng(state["rng"][trial.ranks.rank], trial.generators)
    return state["epoch"], {k: list(v) for k, v in state["history"].items()}


def run_semi_supervised(
    config: TrainConfig, report: Report, resume_from: str | None = None
) -> dict[str, float]:
    """Train one semi-supervised trial; the metrics of its last interval, with the summaries.

    ``report(metrics, checkpoint_dir)`` as :func:`trainers.loop.run` calls it, once per
    evaluation interval; ``resume_from`` a checkpoint folder it was given.
    """
    trial = build_semi_supervised_trial(config)
    ranks = trial.ranks
    every = config.semi_supervised.eval_every
    intervals = config.semi_supervised.intervals()
    start = 0
    history: dict[str, list[float]] = {"top1": [], "ema": []}
    if resume_from is not None:
        start, history = _restore(trial, load_checkpoint(resume_from))
    metrics: dict[str, float] = {}
    eval_batch = max(trial.batch, 256)
    for interval in range(start, intervals):
        started = time.perf_counter()
        lr = trial.optimizer.param_groups[0]["lr"]
        parts = _train_interval(trial, min(trial.total_steps, (interval + 1) * every))
        average_statistics(trial)
        if ranks.device.type == "cuda":
            torch.cuda.synchronize(ranks.device)
        elapsed = time.perf_counter() - started
        top1, top5 = accuracy(trial.model, trial.test_set, trial.eval_transform, ranks, eval_batch)
        history["top1"].append(top1)
        ema: dict[str, float] = {}
        if trial.ema is not None:
            ema_top1, _ = accuracy(
                trial.ema.module, trial.test_set, trial.eval_transform, ranks, eval_batch
            )
            history["ema"].append(ema_top1)
            ema["val_top1_ema"] = ema_top1
        steps_done = trial.step - interval * every
        metrics = {
            "epoch": interval + 1,
            "step": trial.step,
            **parts,
            "val_top1": top1,
            "val_top5": top5,
            **ema,
            "lr": lr,
            "epoch_time_s": elapsed,
            "images_per_s": steps_done
            * (trial.batch + trial.unlabelled_batch)
            * ranks.world_size
            / elapsed,
        }
        if ranks.device.type == "cuda":
            metrics["gpu_memory_peak_gib"] = torch.cuda.max_memory_reserved(ranks.device) / 2**30
        last = interval + 1 == intervals
        if last:
            metrics["top1_median_last10"] = median_of_last(history["top1"], 10)
            metrics["top1_best"] = max(history["top1"])
            if history["ema"]:
                metrics["top1_ema_best"] = max(history["ema"])
        checkpoint = None
        if last or (interval + 1) % config.checkpoint_every == 0:
            rng = gather(rng_state(trial.generators), ranks)
            if ranks.is_main:
                checkpoint = save_checkpoint(
                    _state(trial, interval + 1, history, rng), config.model_dump(mode="json")
                )
        try:
            report(metrics, checkpoint)
        finally:
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics
