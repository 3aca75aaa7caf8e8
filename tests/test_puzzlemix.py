"""PuzzleMix's core: the graph cut against brute force, the transport, the mixed batch.

Every check compares with a truth computed here independently (enumerated labellings, the
energy written out from the paper's terms, blocks counted), nothing is mocked.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.mixing import graph_cut as cut
from trainers.mixing import puzzlemix as pm

torch.set_num_threads(1)


def energies(problem: cut.LabellingProblem, labels: np.ndarray) -> np.ndarray:
    """The energy of each labelling in ``labels`` (K, B, B), written out term by term."""
    n_labels = problem.unary.shape[-1]
    z = labels / (n_labels - 1)
    rows, cols = np.indices(labels.shape[1:])
    unary = problem.unary[rows, cols, labels].sum(axis=(1, 2))
    down = (problem.down * (z[:, 1:] - z[:, :-1]) ** 2).sum(axis=(1, 2))
    right = (problem.right * (z[:, :, 1:] - z[:, :, :-1]) ** 2).sum(axis=(1, 2))
    return unary + down + right


def all_labellings(n_labels: int, rows: int, cols: int) -> np.ndarray:
    grid = itertools.product(range(n_labels), repeat=rows * cols)
    return np.array(list(grid), dtype=np.int64).reshape(-1, rows, cols)


def random_problem(
    rng: np.random.Generator, n_labels: int, rows: int, cols: int, smooth: float = 1.0
) -> cut.LabellingProblem:
    """Unary costs of either sign; weights >= 0, some exactly 0, at ``smooth`` times the unary."""
    down = rng.random((rows - 1, cols)) * smooth * (rng.random((rows - 1, cols)) > 0.2)
    right = rng.random((rows, cols - 1)) * smooth * (rng.random((rows, cols - 1)) > 0.2)
    return cut.LabellingProblem(
        unary=rng.normal(size=(rows, cols, n_labels)), down=down, right=right
    )


@pytest.mark.parametrize(("n_labels", "rows", "cols"), [(2, 3, 3), (3, 3, 3), (4, 2, 3)])
def test_graph_cut_finds_the_brute_force_optimum(n_labels, rows, cols):
    """All n_labels ** 9 (or 4 ** 6) labellings enumerated: the cut's energy is the minimum."""
    rng = np.random.default_rng(n_labels)
    candidates = all_labellings(n_labels, rows, cols)
    for smooth in (0.0, 0.3, 1.0, 3.0, 10.0):
        for _ in range(4):
            problem = random_problem(rng, n_labels, rows, cols, smooth)
            found = cut.solve_labelling(problem)
            assert found.shape == (rows, cols) and found.min() >= 0 and found.max() < n_labels
            best = energies(problem, candidates).min()
            assert energies(problem, found[None])[0] == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_graph_cut_on_puzzlemix_energies_matches_brute_force():
    """Energies labelling_problems builds from images (3x3 grid, two labels): solved exactly."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 12, 12, generator=g)
    saliency = pm.pool_saliency(torch.rand(6, 12, 12, generator=g) ** 3, 3)
    lam = torch.rand(3, generator=g, dtype=torch.float64)
    settings = pm.PuzzleMixSettings(grids=(3,), n_labels=2, neigh_size=2, beta=20.0, eta=1.0)
    problems = pm.labelling_problems(
        saliency[:3], saliency[3:], images[:3], images[3:], lam, 3, settings
    )
    candidates = all_labellings(2, 3, 3)
    for problem in problems:
        found = cut.solve_labelling(problem)
        assert energies(problem, found[None])[0] == pytest.approx(
            energies(problem, candidates).min(), rel=1e-9, abs=1e-12
        )


def test_three_labels_no_worse_than_many_random_labellings():
    rng = np.random.default_rng(7)
    for _ in range(5):
        problem = random_problem(rng, 3, 6, 6, smooth=2.0)
        found = energies(problem, cut.solve_labelling(problem)[None])[0]
        random = rng.integers(0, 3, size=(5000, 6, 6))
        assert found <= energies(problem, random).min() + 1e-12


@pytest.mark.parametrize("n_labels", [2, 3, 5])
def test_no_single_block_change_improves_a_large_labelling(n_labels):
    """Beyond brute force (16 x 16): every labelling one block away costs at least as much."""
    rng = np.random.default_rng(n_labels)
    problem = random_problem(rng, n_labels, 16, 16, smooth=0.5)
    found = cut.solve_labelling(problem)
    neighbours = np.repeat(found[None], 256 * n_labels, axis=0)
    blocks_, labels = np.divmod(np.arange(256 * n_labels), n_labels)
    neighbours[np.arange(len(neighbours)), blocks_ // 16, blocks_ % 16] = labels
    assert energies(problem, found[None])[0] <= energies(problem, neighbours).min() + 1e-12


def direct_energy(
    z: np.ndarray,
    saliency_a: np.ndarray,
    saliency_b: np.ndarray,
    pixels: dict[str, np.ndarray],
    grid: int,
    neigh: int,
    beta: float,
    gamma: float,
) -> float:
    """Two labels, the paper's terms without the prior: saliency lost, beta [z_i != z_j], and
    gamma * beta * (mean |difference| of the neigh-pooled pixels facing across the boundary of
    the images actually on each side), computed block by block."""
    pooled = {
        key: F.avg_pool2d(torch.from_numpy(value), neigh).numpy() for key, value in pixels.items()
    }
    k = pooled["a"].shape[-1] // grid
    side = {1: "a", 0: "b"}
    total = float((z * saliency_b + (1 - z) * saliency_a).sum())
    for r in range(grid):
        for c in range(grid):
            if r + 1 < grid:
                top = pooled[side[z[r, c]]][:, (r + 1) * k - 1, c * k : (c + 1) * k]
                bottom = pooled[side[z[r + 1, c]]][:, (r + 1) * k, c * k : (c + 1) * k]
                total += beta * (z[r, c] != z[r + 1, c])
                total += beta * gamma * float(np.abs(top - bottom).mean())
            if c + 1 < grid:
                left = pooled[side[z[r, c]]][:, r * k : (r + 1) * k, (c + 1) * k - 1]
                right = pooled[side[z[r, c + 1]]][:, r * k : (r + 1) * k, (c + 1) * k]
                total += beta * (z[r, c] != z[r, c + 1])
                total += beta * gamma * float(np.abs(left - right).mean())
    return total


def test_labelling_energy_is_the_papers_two_label_energy():
    """labelling_problems' split of the data term into unary and pairwise parts changes the
    energy by a constant only: against the term-by-term energy on 300 random 4x4 masks."""
    g = torch.Generator().manual_seed(1)
    grid, neigh = 4, 2
    a, b = torch.rand(2, 1, 3, 16, 16, generator=g, dtype=torch.float64)
    sal_a, sal_b = pm.pool_saliency(torch.rand(2, 16, 16, generator=g), grid)
    settings = pm.PuzzleMixSettings(grids=(grid,), n_labels=2, neigh_size=neigh, eta=0.0)
    (problem,) = pm.labelling_problems(
        sal_a[None], sal_b[None], a, b, torch.tensor([0.5]), grid, settings
    )
    beta = settings.beta / grid / 16
    pixels = {"a": a[0].numpy(), "b": b[0].numpy()}
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, size=(300, grid, grid))
    ours = energies(problem, masks)
    truth = np.array(
        [
            direct_energy(m, sal_a.numpy(), sal_b.numpy(), pixels, grid, neigh, beta, 0.5)
            for m in masks
        ]
    )
    offset = ours - truth
    assert np.ptp(offset) < 1e-12
    assert np.ptp(truth) > 1e-3  # the masks' energies do differ


def test_prior_is_binomial_in_the_share_of_a():
    lam = torch.tensor([0.3], dtype=torch.float64)
    costs = pm.prior_costs(lam, 3)[0].numpy()
    expected = -np.log(np.array([0.7**2, 2 * 0.3 * 0.7, 0.3**2]) + pm.PRIOR_EPS)
    np.testing.assert_allclose(costs, expected, rtol=1e-12)


def boundaries(labels: np.ndarray) -> int:
    return int((labels[1:] != labels[:-1]).sum() + (labels[:, 1:] != labels[:, :-1]).sum())


def test_larger_smoothness_weight_gives_fewer_boundaries():
    rng = np.random.default_rng(3)
    unary = rng.normal(size=(8, 8, 2))
    counts = []
    for weight in (0.0, 0.05, 0.2, 0.5, 1.0, 3.0, 100.0):
        problem = cut.LabellingProblem(
            unary=unary, down=np.full((7, 8), weight), right=np.full((8, 7), weight)
        )
        counts.append(boundaries(cut.solve_labelling(problem)))
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > 20 and counts[-1] == 0


def recovered_masks(mixed: torch.Tensor, inputs: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Per pixel, the share of side a in images that are constant per sample (N, H, W)."""
    a, b = inputs[:, 0], inputs[perm, 0]
    return (mixed[:, 0] - b) / (a - b)


def blob_saliency(n: int, side: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.randint(side, (n, 2, 1, 1), generator=g).double()
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    d2 = (yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2
    return torch.exp(-d2 / (2 * (side / 6) ** 2)).float()


@pytest.mark.parametrize("lambda_mode", ["batch", "sample"])
def test_lambda_is_the_mask_share_of_a(lambda_mode):
    """Images constant per sample (and all distinct): the transport moves blocks of one value,
    so each mixed pixel tells the mask's value there; lam is their mean."""
    g = torch.Generator().manual_seed(5)
    n, side = 16, 32
    inputs = (torch.arange(n, dtype=torch.float32) / n - 0.5).reshape(n, 1, 1, 1)
    inputs = inputs.expand(n, 3, side, side).contiguous()
    saliency = blob_saliency(n, side, g)
    batch = pm.puzzlemix(
        inputs,
        torch.arange(n),
        saliency,
        alpha=0.5,
        generator=torch.Generator().manual_seed(11),
        lambda_mode=lambda_mode,
    )
    mixed_pairs = batch.perm != torch.arange(n)
    masks = recovered_masks(batch.inputs, inputs, batch.perm)[mixed_pairs]
    assert set(torch.round(masks * 2).unique().tolist()) <= {0.0, 1.0, 2.0}  # 3 labels
    torch.testing.assert_close(masks.mean(dim=(1, 2)), batch.lam[mixed_pairs], atol=1e-6, rtol=0)
    assert batch.lam.dtype == torch.float32 and batch.lam.shape == (n,)
    assert torch.equal(batch.y_b, torch.arange(n)[batch.perm])
    assert len(batch.lam[mixed_pairs].unique()) > 1  # the masks differ between samples


def blocks(images: torch.Tensor, grid: int) -> list[list[tuple[float, ...]]]:
    """Each image's blocks, as sorted lists of their pixel values (a multiset per image)."""
    side = images.shape[-1] // grid
    tiles = images.unfold(2, side, side).unfold(3, side, side).permute(0, 2, 3, 1, 4, 5)
    tiles = tiles.reshape(images.shape[0], grid * grid, -1)
    return [sorted(map(tuple, t.tolist())) for t in tiles]


def test_transport_keeps_every_block():
    g = torch.Generator().manual_seed(2)
    for grid in (2, 4, 8):
        n = 6
        saliency = torch.rand(n, grid, grid, generator=g) ** 4
        saliency[0] = 0
        saliency[1, 0, 0] = 1  # one block wanted everywhere: many conflicting bids
        visible = torch.rand(n, grid, grid, generator=g) > 0.6
        visible[1] = False
        visible[1, 1, 1] = True
        source = pm.transport_plan(saliency, visible, t_eps=0.8)
        assert torch.equal(source.sort(dim=1).values, torch.arange(grid * grid).expand(n, -1))
        images = torch.rand(n, 3, 4 * grid, 4 * grid, generator=g)
        moved = pm.apply_transport(images, source, grid)
        assert blocks(moved, grid) == blocks(images, grid)
        if grid > 2:  # a move to the diagonal neighbour costs 0.8 * 2 / (grid - 1)^2 < 1
            assert source[1, grid + 1] == 0 and not torch.equal(moved, images)


def test_transport_brings_the_salient_block_into_view():
    grid = 4
    saliency = torch.full((1, grid, grid), 0.01)
    saliency[0, 3, 3] = 1.0  # the salient block sits where the mask hides the image
    visible = torch.zeros(1, grid, grid, dtype=torch.bool)
    visible[0, :2, :2] = True
    source = pm.transport_plan(saliency, visible, t_eps=0.8)[0]
    destination = int((source == 3 * grid + 3).nonzero())
    assert visible[0].ravel()[destination]
    # Without a reason to move, a block stays where it is.
    still = pm.transport_plan(torch.zeros(1, grid, grid), visible, t_eps=0.8)[0]
    assert torch.equal(still, torch.arange(grid * grid))


def test_more_smoothness_in_the_policy_gives_fewer_mask_boundaries():
    """With gamma = 0 the energy is unary + beta * smoothness, so its optimum's smoothness term
    cannot grow with beta; at a huge beta every mask is constant."""
    g = torch.Generator().manual_seed(8)
    n, side = 8, 32
    inputs = (torch.arange(n, dtype=torch.float32) / n - 0.5).reshape(n, 1, 1, 1)
    inputs = inputs.expand(n, 3, side, side).contiguous()
    saliency = torch.rand(n, side, side, generator=g) ** 6
    counts = []
    for beta in (0.0, 1.2, 1e4):
        settings = pm.PuzzleMixSettings(grids=(8,), beta=beta, gamma=0.0, n_labels=2)
        batch = pm.puzzlemix(
            inputs,
            torch.arange(n),
            saliency,
            alpha=1.0,
            generator=torch.Generator().manual_seed(4),
            settings=settings,
        )
        keep = batch.perm != torch.arange(n)
        masks = recovered_masks(batch.inputs, inputs, batch.perm)[keep][:, ::4, ::4]
        counts.append(sum(boundaries(m.round().numpy()) for m in masks))
    assert counts[0] > counts[1] > counts[2] == 0


def test_same_result_in_process_and_with_two_workers():
    g = torch.Generator().manual_seed(9)
    inputs = torch.randn(6, 3, 32, 32, generator=g)
    saliency = torch.rand(6, 32, 32, generator=g) ** 4
    settings = pm.PuzzleMixSettings(grids=(8,), transport_size=4)
    results = [
        pm.puzzlemix(
            inputs,
            torch.arange(6),
            saliency,
            alpha=1.0,
            generator=torch.Generator().manual_seed(2),
            lambda_mode="sample",
            settings=settings,
            workers=workers,
        )
        for workers in (0, 2)
    ]
    assert torch.equal(results[0].inputs, results[1].inputs)
    assert torch.equal(results[0].lam, results[1].lam)


def test_a_seeded_generator_reproduces_the_batch():
    g = torch.Generator().manual_seed(10)
    inputs = torch.randn(8, 3, 32, 32, generator=g)
    saliency = torch.rand(8, 32, 32, generator=g) ** 4

    def run(seed: int):
        return pm.puzzlemix(
            inputs,
            torch.arange(8),
            saliency,
            alpha=2.0,
            generator=torch.Generator().manual_seed(seed),
            lambda_mode="sample",
        )

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.lam, again.lam)
    assert torch.equal(first.perm, again.perm)
    assert not torch.equal(first.inputs, other.inputs)


def test_saliency_is_the_channel_norm_of_the_gradient_pooled_to_the_grid():
    grad = torch.zeros(1, 3, 4, 4)
    grad[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    grad[0, 0, 3, 3] = 2.0
    saliency = pm.saliency_from_gradient(grad)
    assert saliency[0, 0, 0] == pytest.approx(5 / 3**0.5)
    assert saliency[0, 3, 3] == pytest.approx(2 / 3**0.5)
    pooled = pm.saliency_from_gradient(grad, grid=2)
    np.testing.assert_allclose(pooled[0].numpy(), [[5 / 7, 0], [0, 2 / 7]], rtol=1e-6)
    # A zero gradient weighs every block alike.
    assert torch.equal(pm.pool_saliency(torch.zeros(1, 4, 4), 2), torch.full((1, 2, 2), 0.25))


def test_bad_arguments_are_named():
    inputs = torch.zeros(2, 3, 32, 32)
    generator = torch.Generator()
    with pytest.raises(ValueError, match="saliency must have shape"):
        pm.puzzlemix(
            inputs, torch.arange(2), torch.zeros(2, 16, 16), alpha=1.0, generator=generator
        )
    with pytest.raises(ValueError, match="does not divide"):
        pm.puzzlemix(
            inputs,
            torch.arange(2),
            torch.zeros(2, 32, 32),
            alpha=1.0,
            generator=generator,
            settings=pm.PuzzleMixSettings(grids=(3,)),
        )
    with pytest.raises(ValueError, match="workers"):
        pm.puzzlemix(
            inputs,
            torch.arange(2),
            torch.zeros(2, 32, 32),
            alpha=1.0,
            generator=generator,
            workers=-1,
        )
    nan = cut.LabellingProblem(
        unary=np.full((2, 2, 2), np.nan), down=np.zeros((1, 2)), right=np.zeros((2, 1))
    )
    with pytest.raises(ValueError, match="finite"):
        cut.solve_labelling(nan)
