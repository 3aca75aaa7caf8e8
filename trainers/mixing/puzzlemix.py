"""PuzzleMix (Kim et al., ICML 2020): graph-cut masks over saliency, and block transport.

The pure core of the policy of Kim, Choo & Song, "Puzzle Mix: Exploiting Saliency and Local
Statistics for Optimal Mixup" (ICML 2020), without the model. The caller runs the model once
on the clean batch and hands in the saliency map (:func:`saliency_from_gradient` of the input
gradient of the clean loss). For each pair (``a = inputs[n]``, ``b = inputs[perm[n]]``)
PuzzleMix then chooses, on a grid of ``B x B`` blocks (``B`` drawn per batch from
:attr:`PuzzleMixSettings.grids`):

1. a mask ``z`` with values in ``{0, 1/(L-1), ..., 1}`` (``L = n_labels``; ``z`` is the share of
   the "a" side, the paper's ``1 - z`` with ``x_0 = a``) minimising the mask part of the
   paper's objective (saliency kept, label and data smoothness, the prior on the ratio), as
   the authors' code discretises it (:func:`labelling_problems` writes each term out)::

       sum_i  z_i s_b,i + (1 - z_i) s_a,i      saliency lost (the unary term)
            + beta' gamma phi-unary_i(z_i)     data smoothness, linear part
            - (eta / B^2) log p(z_i | lam)     the prior: Binomial(L - 1, lam)
       + sum_(i,j) w_ij (z_i - z_j)^2          label smoothness (beta' + beta' gamma phi)

   with ``s`` each image's saliency average-pooled to the grid and normalised to sum 1,
   ``beta' = beta / B / 16`` and ``lam ~ Beta(alpha, alpha)`` the prior's mixing ratio;
2. for each side, a transport of its blocks within the image (the paper's ``Pi_0`` and
   ``Pi_1``, with their transport cost in the objective) that moves salient blocks to where
   that side is visible in the mask, at a cost of ``t_eps`` times the squared distance moved
   (:func:`transport_plan`);

and mixes ``z * T_a(a) + (1 - z) * T_b(b)``: the paper's
``h(x_0, x_1) = (1 - z) * Pi_0^T x_0 + z * Pi_1^T x_1`` with the sides named as here. ``lam``
returned is the mask's mean, the share of the "a" side (the transport only moves blocks
around within each image).

**The graph-cut solver.** The authors and OpenMixup (``openmixup/models/augments/puzzlemix.py``)
call ``gco`` (the ``gco-wrapper`` package, GCoptimization's alpha-beta swap). Its wheels exist
for CPython 3.10 and 3.11 only (``pip download --only-binary=:all:`` finds manylinux x86_64
wheels of 3.0.9 for cp310 and cp311, none for 3.12 or 3.13, where pip would compile its sdist
with a C++ toolchain), while dmsweep supports every Python from 3.10. So the labelling is
solved here, exactly, by one minimum s-t cut in pure Python: the pairwise term
``w (z_i - z_j)^2`` is convex in the label difference, so Ishikawa's construction
(H. Ishikawa, "Exact Optimization for Markov Random Fields with Convex Priors", TPAMI 25(10),
2003) turns the ``L``-label problem into ``L - 1`` binary layers whose minimum cut is a global
optimum (``trainers.mixing.graph_cut``: a Boykov-Kolmogorov max-flow on exact integers, a few
milliseconds for a 16 x 16 grid with 3 labels). That is an exact minimum for any ``L``, where
gco's swap moves reach a local one; alpha expansion, the usual choice for more than two
labels, would not even apply, as its moves are not submodular for the squared difference
(``V(0,1) = 1 > V(0,1/2) + V(1/2,1) = 1/2``). For two labels the construction is the
ordinary binary min cut.

The labelling runs on the CPU, per sample (``graph_cut.solve_labelling``, a top-level function
of a picklable problem), so that ``workers > 0`` solves the batch in a process pool; the solver
is deterministic, so the result does not depend on the worker count. The
rest (pooling, the energy's terms, the transport, the mixing) is batched on the batch's device.

**Differences from OpenMixup's code**, each for correctness, none changing the energy:

* its transport (``mask_transport``) can leave a block unassigned or a destination empty (its
  conflict step compares against the zeros of rows that did not choose the column); here a
  column goes to the cheapest row that chose it, and the rows still unassigned after the
  authors' ``T`` rounds are matched greedily by cost, so the plan is always a permutation;
* capacities are integers at a resolution of ``2**-40`` of the largest term (gco's are
  ``int32`` at ``1 / (1000 B^2)``), and smoothness weights are clamped at 0 (never active for
  images in [0, 1] with ``gamma <= 1``: the data term's pairwise part is at least ``-1``);
* the data term's statistics are OpenMixup's (``neigh_penalty``: mean absolute difference of
  ``neigh_size``-pooled pixels on both sides of each block boundary) on the de-normalised image.

Defaults (:data:`SMALL_SCALE`, :data:`LARGE_SCALE`) are OpenMixup's configurations; see there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.mixing.base import (
    LambdaMode,
    MixedBatch,
    check_batch,
    draw_count,
    draw_permutation,
    mixed_batch,
    sample_beta,
)
from trainers.mixing.graph_cut import LabellingProblem, solve_all

__all__ = [
    "LARGE_SCALE",
    "SMALL_SCALE",
    "PuzzleMixSettings",
    "apply_transport",
    "default_settings",
    "labelling_problems",
    "pool_saliency",
    "puzzlemix",
    "saliency_from_gradient",
    "transport_plan",
]


@dataclass(frozen=True)
class PuzzleMixSettings:
    """PuzzleMix's hyper-parameters (OpenMixup's ``mix_args['puzzlemix']`` names in brackets).

    * ``grids``: block grid sides, one drawn uniformly per draw (``block_num``: OpenMixup draws
      ``2 ** randint(1, block_num)``, so ``block_num=5`` is {2, 4, 8, 16});
    * ``beta``: label smoothness, divided by ``16 B`` before use as OpenMixup does;
    * ``gamma``: data (local statistics) smoothness, relative to ``beta``;
    * ``eta``: weight of the Binomial prior on the labels, divided by ``B^2``;
    * ``neigh_size``: side of the pixel patches the data term compares across a boundary
      (at most the block's side);
    * ``n_labels``: mask levels, ``{0, 1/(n-1), ..., 1}``;
    * ``t_eps``: weight of the transport's distance cost;
    * ``transport``: whether to transport blocks at all;
    * ``transport_size``: side in pixels of the blocks moved by the transport (``t_size``);
      ``None`` moves the mask's own blocks (OpenMixup's ``t_size=-1``). Blocks never get
      larger than the mask's.
    """

    grids: tuple[int, ...]
    beta: float = 1.2
    gamma: float = 0.5
    eta: float = 0.2
    neigh_size: int = 4
    n_labels: int = 3
    t_eps: float = 0.8
    transport: bool = True
    transport_size: int | None = None


# CIFAR (32 px): configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py (the base of
# r18_puzzlemix_CE_soft.py; the CIFAR-10 and rx50/WRN files say the same): transport=True,
# t_size=4, block_num=5 (grids 2, 4, 8, 16), beta=1.2, gamma=0.5, eta=0.2, neigh_size=4,
# n_labels=3, t_eps=0.8. Those configs draw the prior from Beta(1, 1) (alpha=1).
SMALL_SCALE = PuzzleMixSettings(grids=(2, 4, 8, 16), transport_size=4)
# Larger images: configs/classification/imagenet/mixups/basic/r50_mixups_CE_none_4xb64.py,
# configs/classification/tiny_imagenet/mixups/basic/r18_mixups_CE_none.py,
# configs/classification/cub200/mixups/basic/r18_mixups_CE_none.py and the 224-px CIFAR-100 ViT
# configs (configs/classification/cifar100/mixups/vits/deit_s_mixups_sz224_bs100.py), and the
# defaults of openmixup/models/classifiers/mixup_classification.py: block_num=4 (grids 2, 4, 8),
# t_size=-1, the rest as above. Their alpha is 1 (r18/r50 basic) or 2 (the *_a2_* ViT files).
LARGE_SCALE = PuzzleMixSettings(grids=(2, 4, 8))

# Images narrower than this take SMALL_SCALE and CIFAR's pixel statistics, as OpenMixup's
# puzzlemix.py picks its default mean and std (``img.shape[-1] < 64``).
SMALL_IMAGE_SIDE = 64
# The statistics OpenMixup's puzzlemix.py de-normalises with when none are given (CIFAR-10's
# for images under 64 px, ImageNet's otherwise); the data term compares pixels in [0, 1].
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Inside the prior's log, as OpenMixup's graphcut_multi: keeps log(0) finite at lam in {0, 1}.
PRIOR_EPS = 1e-8


def default_settings(side: int) -> PuzzleMixSettings:
    """OpenMixup's settings for images of ``side`` pixels: CIFAR's under 64 px, else ImageNet's."""
    return SMALL_SCALE if side < SMALL_IMAGE_SIDE else LARGE_SCALE


# --- saliency ---------------------------------------------------------------------------------


def saliency_from_gradient(grad: Tensor, grid: int | None = None) -> Tensor:
    """PuzzleMix's saliency: the norm over channels of the input gradient of the clean loss.

    ``grad`` is ``d loss / d inputs``, shape (N, C, H, W). The map is the root mean square over
    channels, ``sqrt(mean_c grad^2)`` (N, H, W), as the authors' ``main.py`` and OpenMixup's
    ``MixUpClassification._features`` compute it (the paper's l2 norm over channels, divided by
    ``sqrt(C)``, which the normalisation below removes). The only smoothing the authors apply
    is the average pooling to the block grid: with ``grid``, the map is pooled to
    ``(grid, grid)`` and normalised to sum 1 per image (:func:`pool_saliency`).
    """
    if grad.dim() != 4:
        raise ValueError(f"grad must have shape (N, C, H, W); got {tuple(grad.shape)}")
    saliency = grad.detach().pow(2).mean(dim=1).sqrt()
    return saliency if grid is None else pool_saliency(saliency, grid)


def pool_saliency(saliency: Tensor, grid: int) -> Tensor:
    """Average ``saliency`` (N, H, W) over ``grid x grid`` blocks, each image summing to 1.

    The unary term compares the two images' shares of their own saliency (OpenMixup's
    ``unary_pool / unary_pool.sum``); an all-zero map counts every block alike.
    """
    height, width = saliency.shape[-2:]
    pooled = F.avg_pool2d(saliency[:, None].double(), (height // grid, width // grid))[:, 0]
    total = pooled.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / grid**2)
    return torch.where(total > 0, pooled / total.clamp_min(torch.finfo(pooled.dtype).tiny), uniform)


def prior_costs(lam: Tensor, n_labels: int) -> Tensor:
    """``-log p(z = k / (L-1))`` per label, p the Binomial(L - 1, lam) law: (N, L).

    The paper's prior on the mixing ratio; OpenMixup's graphcut_multi writes it out for 2, 3
    and 4 labels (``lam^2``, ``2 lam (1 - lam)``, ``(1 - lam)^2`` for 3), ``lam`` the share of a.
    """
    k = torch.arange(n_labels, dtype=torch.float64, device=lam.device)
    log_choose = torch.tensor(
        [math.log(math.comb(n_labels - 1, int(i))) for i in range(n_labels)],
        dtype=torch.float64,
        device=lam.device,
    )
    lam = lam.double()[:, None]
    probability = torch.exp(log_choose) * lam**k * (1 - lam) ** (n_labels - 1 - k)
    return -torch.log(probability + PRIOR_EPS)


def boundary_discrepancy(
    upper: Tensor, lower: Tensor, grid: int, neigh: int
) -> tuple[Tensor, Tensor]:
    """Mean |difference| of ``neigh``-pooled pixels facing each other across block boundaries.

    ``upper`` fills the block above (or left of) a boundary and ``lower`` the one below (or
    right of) it; both (N, C, H, W) in [0, 1]. The statistic of OpenMixup's ``neigh_penalty``:
    the patches of ``neigh x neigh`` pixels touching the boundary on each side, their absolute
    difference averaged over channels and along the block's side. Returns (N, B - 1, B) for
    vertical neighbours and (N, B, B - 1) for horizontal ones.
    """
    p_up = F.avg_pool2d(upper, neigh)
    p_low = F.avg_pool2d(lower, neigh)
    kh, kw = p_up.shape[-2] // grid, p_up.shape[-1] // grid
    n = upper.shape[0]
    rows = slice(kh - 1, (grid - 1) * kh, kh), slice(kh, grid * kh, kh)
    down = (p_up[:, :, rows[0]] - p_low[:, :, rows[1]]).abs().mean(dim=1)
    down = down.reshape(n, grid - 1, grid, kw).mean(-1)
    cols = slice(kw - 1, (grid - 1) * kw, kw), slice(kw, grid * kw, kw)
    right = (p_up[..., cols[0]] - p_low[..., cols[1]]).abs().mean(dim=1)
    right = right.reshape(n, grid, kh, grid - 1).mean(2)
    return down, right


def _spread(down: Tensor, right: Tensor, on_first: bool) -> Tensor:
    """Sum edge terms onto their first (upper/left) or second (lower/right) block: (N, B, B)."""
    if on_first:
        return F.pad(down, (0, 0, 0, 1)) + F.pad(right, (0, 1))
    return F.pad(down, (0, 0, 1, 0)) + F.pad(right, (1, 0))


def labelling_problems(
    saliency_a: Tensor,
    saliency_b: Tensor,
    pixels_a: Tensor,
    pixels_b: Tensor,
    lam: Tensor,
    grid: int,
    settings: PuzzleMixSettings,
) -> list[LabellingProblem]:
    """The labelling energies of N pairs on a ``grid x grid`` block grid.

    ``saliency_*`` (N, B, B) sum to 1 per image; ``pixels_*`` (N, C, H, W) in [0, 1]; ``lam``
    (N,) the prior's mixing ratio. The data term of the paper, ``phi_ij(z_i, z_j)``, is for two
    labels the discrepancy ``d_pq`` across the boundary when image p fills block i and image q
    block j; it splits exactly (up to a constant) into a part linear in each ``z`` and
    ``(d_ab + d_ba - d_aa - d_bb) / 2 * (z_i - z_j)^2``, the split OpenMixup's code makes and
    extends to more labels by linearity in ``z``. ``beta`` scales both smoothness terms.
    """
    n_labels = settings.n_labels
    beta = settings.beta / grid / 16  # OpenMixup: beta = beta / block_num / 16
    height, width = pixels_a.shape[-2:]
    neigh = min(settings.neigh_size, height // grid, width // grid)
    pairs = {
        (p, q): boundary_discrepancy(x, y, grid, neigh)
        for p, x in (("a", pixels_a), ("b", pixels_b))
        for q, y in (("a", pixels_a), ("b", pixels_b))
    }
    # phi(p, q) = d_pq = first(p) + second(q) + w [p != q] + const, per boundary.
    shows_a = _spread(*_half_sum(pairs["a", "a"], pairs["a", "b"]), on_first=True)
    shows_a += _spread(*_half_sum(pairs["a", "a"], pairs["b", "a"]), on_first=False)
    shows_b = _spread(*_half_sum(pairs["b", "b"], pairs["b", "a"]), on_first=True)
    shows_b += _spread(*_half_sum(pairs["b", "b"], pairs["a", "b"]), on_first=False)
    weights = [
        (beta * (1 + settings.gamma * (ab + ba - aa - bb) / 2)).clamp_min(0)
        for aa, ab, ba, bb in zip(
            pairs["a", "a"], pairs["a", "b"], pairs["b", "a"], pairs["b", "b"], strict=True
        )
    ]
    # Showing a (z = 1) loses b's saliency and pays a's side of the data term; z in between
    # interpolates, as OpenMixup's unary_cost does.
    cost_a = saliency_b.double() + beta * settings.gamma * shows_a.double()
    cost_b = saliency_a.double() + beta * settings.gamma * shows_b.double()
    z = torch.linspace(0, 1, n_labels, dtype=torch.float64, device=cost_a.device)
    prior = settings.eta / grid**2 * prior_costs(lam, n_labels)
    unary = cost_a[..., None] * z + cost_b[..., None] * (1 - z) + prior[:, None, None, :]
    unary_np = unary.cpu().numpy()
    down_np, right_np = (w.double().cpu().numpy() for w in weights)
    return [
        LabellingProblem(unary=unary_np[i], down=down_np[i], right=right_np[i])
        for i in range(unary_np.shape[0])
    ]


def _half_sum(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``(first + second) / 2`` for the (down, right) pairs of boundary statistics."""
    return (first[0] + second[0]) / 2, (first[1] + second[1]) / 2


# --- optimal transport of blocks --------------------------------------------------------------


def transport_costs(grid: int, device: torch.device) -> Tensor:
    """Squared distances between the blocks of a ``grid x grid`` grid, over ``(grid - 1)^2``.

    The transport's cost of moving a block (OpenMixup's ``cost_matrix``): (grid^2, grid^2).
    """
    rows, cols = torch.meshgrid(
        torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij"
    )
    points = torch.stack([rows.ravel(), cols.ravel()], dim=1).double()
    return torch.cdist(points, points).pow(2) / (grid - 1) ** 2


def transport_plan(saliency: Tensor, visible: Tensor, t_eps: float) -> Tensor:
    """Where each block of each image goes: ``source[n, j]``, the block moved to position j.

    ``saliency`` (N, T, T) is the image's block saliency and ``visible`` (N, T, T) where the
    image shows in the mask. Moving block i to position j costs
    ``t_eps * dist(i, j)^2 / (T-1)^2 - saliency_i * visible_j`` (the transport part of the
    paper's objective, solved as the authors approximate it): for ``T`` rounds every block
    bids for its cheapest position, each position goes to its cheapest bidder, and a losing
    bid's cost grows by 1 so the loser looks elsewhere. The blocks still without a position
    then take the free positions greedily, cheapest pair first, so the plan is a permutation:
    the transported image holds exactly the blocks of the original.
    """
    n, grid = saliency.shape[0], saliency.shape[-1]
    size = grid * grid
    device = saliency.device
    cost = t_eps * transport_costs(grid, device)[None] - (
        saliency.reshape(n, size, 1).double() * visible.reshape(n, 1, size).double()
    )
    rows = torch.arange(size, device=device).expand(n, size)
    winner = torch.full((n, size), -1, dtype=torch.long, device=device)
    for _ in range(grid):
        winner, is_winner, choice = _bid(cost, rows)
        # Losers pay 1 more for the position they lost, as in the authors' iteration.
        cost.scatter_add_(2, choice[..., None], (~is_winner).double()[..., None])
    return _complete(cost, winner)


def _bid(cost: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One round: each row's cheapest column, and per column the cheapest (then first) bidder.

    Returns the winning row per column (-1: no bid), whether each row won, and each row's bid.
    """
    n, size, _ = cost.shape
    choice = cost.argmin(dim=2)
    bid = cost.gather(2, choice[..., None])[..., 0]
    best = torch.full((n, size), math.inf, dtype=cost.dtype, device=cost.device)
    best = best.scatter_reduce(1, choice, bid, reduce="amin")
    contender = bid == best.gather(1, choice)
    candidate = torch.where(contender, rows, size)  # ties go to the first row
    first = torch.full((n, size), size, dtype=torch.long, device=cost.device)
    first = first.scatter_reduce(1, choice, candidate, reduce="amin")
    is_winner = first.gather(1, choice) == rows
    winner = torch.where(first < size, first, -1)
    return winner, is_winner, choice


def _complete(cost: Tensor, winner: Tensor) -> Tensor:
    """Extend a partial assignment (``winner[n, col]``, -1 if free) to a permutation.

    The cheapest (row, column) pair among the free rows and free columns is taken, one pair per
    round and image, until none is left.
    """
    n, size, _ = cost.shape
    taken_col = winner >= 0
    # Free columns write into a spare slot, so that they never clear a taken row.
    taken_row = torch.zeros((n, size + 1), dtype=torch.bool, device=cost.device)
    taken_row = taken_row.scatter(1, torch.where(taken_col, winner, size), True)[:, :size]
    source = winner.clone()
    batch = torch.arange(n, device=cost.device)
    for _ in range(int((~taken_col).sum(dim=1).max())):
        free = (~taken_row)[:, :, None] & (~taken_col)[:, None, :]
        flat = torch.where(free, cost, math.inf).reshape(n, -1).argmin(dim=1)
        row, col = flat // size, flat % size
        pending = free.reshape(n, -1).any(dim=1)
        source[batch, col] = torch.where(pending, row, source[batch, col])
        taken_row[batch, row] |= pending
        taken_col[batch, col] |= pending
    return source


def apply_transport(images: Tensor, source: Tensor, grid: int) -> Tensor:
    """Rearrange each image's ``grid x grid`` blocks: position j receives block ``source[n, j]``."""
    n, channels, height, width = images.shape
    bh, bw = height // grid, width // grid
    blocks = images.reshape(n, channels, grid, bh, grid, bw).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(n, grid * grid, channels, bh, bw)
    moved = blocks.gather(1, source[:, :, None, None, None].expand_as(blocks))
    moved = moved.reshape(n, grid, grid, channels, bh, bw).permute(0, 3, 1, 4, 2, 5)
    return moved.reshape(n, channels, height, width)


# --- the policy -------------------------------------------------------------------------------


def _transport_grid(grid: int, side: int, settings: PuzzleMixSettings) -> int:
    """The grid the transport moves blocks on: the mask's, or finer with ``transport_size``."""
    if settings.transport_size is None:
        return grid
    return max(grid, side // settings.transport_size)


def _mix_group(
    inputs: Tensor,
    partners: Tensor,
    saliency: Tensor,
    partner_saliency: Tensor,
    lam: Tensor,
    grid: int,
    settings: PuzzleMixSettings,
    pixel_stats: tuple[Tensor, Tensor],
    workers: int | Executor,
) -> tuple[Tensor, Tensor]:
    """Mix the pairs of one grid size: the mixed images and the masks (N, B, B)."""
    mean, std = pixel_stats
    height, width = inputs.shape[-2:]
    problems = labelling_problems(
        pool_saliency(saliency, grid),
        pool_saliency(partner_saliency, grid),
        inputs.detach() * std + mean,
        partners.detach() * std + mean,
        lam,
        grid,
        settings,
    )
    levels = np.stack(solve_all(problems, workers))
    mask = torch.from_numpy(levels).to(inputs.device, torch.float64) / (settings.n_labels - 1)
    if settings.transport:
        t_grid = _transport_grid(grid, min(height, width), settings)
        fine = mask.repeat_interleave(t_grid // grid, 1).repeat_interleave(t_grid // grid, 2)
        plan_a = transport_plan(pool_saliency(saliency, t_grid), fine > 0, settings.t_eps)
        plan_b = transport_plan(pool_saliency(partner_saliency, t_grid), fine < 1, settings.t_eps)
        inputs = apply_transport(inputs, plan_a, t_grid)
        partners = apply_transport(partners, plan_b, t_grid)
    pixels = mask.repeat_interleave(height // grid, 1).repeat_interleave(width // grid, 2)
    weight = pixels[:, None].to(inputs.dtype)
    return torch.lerp(partners, inputs, weight), mask


def _check_arguments(
    inputs: Tensor, saliency: Tensor, settings: PuzzleMixSettings, workers: object
) -> None:
    """Raise a ValueError naming what PuzzleMix cannot work with."""
    n, _, height, width = inputs.shape
    if not isinstance(saliency, Tensor) or saliency.shape != (n, height, width):
        got = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must have shape ({n}, {height}, {width}); got {got}")
    if saliency.device != inputs.device:
        raise ValueError(f"saliency is on {saliency.device} but inputs on {inputs.device}")
    if settings.n_labels < 2:
        raise ValueError(f"n_labels must be >= 2; got {settings.n_labels}")
    if not settings.grids:
        raise ValueError("settings.grids must name at least one grid side")
    for grid in settings.grids:
        t_grid = _transport_grid(grid, min(height, width), settings)
        if grid < 2 or height % t_grid or width % t_grid or t_grid % grid:
            raise ValueError(
                f"a {grid} x {grid} grid (transport on {t_grid} x {t_grid}) does not divide "
                f"{height} x {width} images into equal blocks"
            )
        neigh = min(settings.neigh_size, height // grid, width // grid)
        if (height // grid) % neigh or (width // grid) % neigh:
            raise ValueError(
                f"neigh_size {neigh} does not divide the {height // grid} x {width // grid} blocks"
            )
    if not isinstance(workers, Executor) and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise ValueError(f"workers must be an integer >= 0 or an Executor; got {workers!r}")


def puzzlemix(
    inputs: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    alpha: float,
    generator: torch.Generator,
    lambda_mode: LambdaMode = "batch",
    settings: PuzzleMixSettings | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int | Executor = 0,
) -> MixedBatch:
    """Mix each image ``inputs[n]`` with ``inputs[perm[n]]`` by PuzzleMix's optimal mask.

    ``saliency`` (N, H, W) is each image's saliency map (:func:`saliency_from_gradient`).
    ``settings`` default to OpenMixup's for the image size (:func:`default_settings`); ``mean``
    and ``std`` are the normalisation of ``inputs`` (default: OpenMixup's, CIFAR-10's under
    64 px, ImageNet's above), undone for the data term. ``workers`` processes solve the graph
    cuts (0: in this process), or an Executor the caller owns.

    ``batch`` mode draws one prior ratio ``lam ~ Beta(alpha, alpha)`` and one grid for the
    batch (as OpenMixup), ``sample`` one of each per sample; either way every pair gets its own
    mask, and ``lam`` returned is each mask's mean, the share of the "a" side.
    """
    check_batch(inputs, targets, generator, images=True, alpha=alpha, lambda_mode=lambda_mode)
    n, width = inputs.shape[0], inputs.shape[-1]
    settings = default_settings(width) if settings is None else settings
    _check_arguments(inputs, saliency, settings, workers)
    device = inputs.device
    draws = draw_count(n, lambda_mode)
    prior = sample_beta(alpha, draws, generator, device).expand(n)
    choice = torch.randint(len(settings.grids), (draws,), generator=generator, device=device)
    perm = draw_permutation(n, generator, device)
    default_mean, default_std = CIFAR_MEAN_STD if width < SMALL_IMAGE_SIDE else IMAGENET_MEAN_STD
    pixel_stats = tuple(
        torch.as_tensor(
            given if given is not None else fallback, dtype=inputs.dtype, device=device
        ).reshape(1, -1, 1, 1)
        for given, fallback in ((mean, default_mean), (std, default_std))
    )
    saliency = saliency.detach()
    mixed = torch.empty_like(inputs)
    lam = torch.empty(n, dtype=torch.float64, device=device)
    grid_of = choice.expand(n).cpu()
    for index in torch.unique(grid_of).tolist():
        members = (grid_of == index).nonzero()[:, 0].to(device)
        partners = perm[members]
        images, mask = _mix_group(
            inputs[members],
            inputs[partners],
            saliency[members],
            saliency[partners],
            prior[members],
            settings.grids[index],
            settings,
            (pixel_stats[0], pixel_stats[1]),
            workers,
        )
        mixed[members] = images
        lam[members] = mask.mean(dim=(1, 2))
    return mixed_batch(mixed, targets, lam, perm)
