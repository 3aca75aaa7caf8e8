"""The paper's metrics on hand-built logits."""

from __future__ import annotations

import pytest
import torch

from trainers.metrics import fgsm_error, median_of_last, mixed_correct, topk_correct


def test_topk_counts_hand_computed():
    logits = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 0: top-1
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: top-5, not top-1
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: neither
        ]
    )
    labels = torch.tensor([0, 4, 5])
    assert topk_correct(logits, labels, ks=(1, 5)).tolist() == [1, 2]
    assert topk_correct(logits[:, :3], torch.tensor([0, 1, 2]), ks=(1, 5)).tolist() == [1, 3]


def test_mixed_top1_and_top2_of_figure_2():
    logits = torch.tensor(
        [
            [3.0, 2.0, 1.0, 0.0],  # pair (1, 0): top-1 is a class of the pair, top-2 is the pair
            [3.0, 2.0, 1.0, 0.0],  # pair (2, 0): top-1 yes, top-2 {0, 1} is not {0, 2}
            [3.0, 2.0, 1.0, 0.0],  # pair (2, 3): neither
            [3.0, 2.0, 1.0, 0.0],  # same-class pair (0, 0): left out
        ]
    )
    y_a = torch.tensor([1, 2, 2, 0])
    y_b = torch.tensor([0, 0, 3, 0])
    assert mixed_correct(logits, y_a, y_b).tolist() == [2, 1, 3]


def test_median_of_the_last_ten():
    assert median_of_last(list(range(100)), 10) == 94.5
    assert median_of_last([3.0, 1.0, 2.0]) == 2.0  # a short run: all of it
    with pytest.raises(ValueError, match="no values"):
        median_of_last([])


def test_fgsm_moves_pixels_against_the_gradient_within_epsilon():
    # A linear model on 2 pixels: class 1 wins when x1 > x0. The image (0.50, 0.52) is class 1;
    # FGSM with eps 0.05 moves it to (0.55, 0.47), class 0.
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    images = torch.tensor([[0.50, 0.52], [0.10, 0.90]])
    labels = torch.tensor([1, 1])
    wrong, total = fgsm_error(model, images, labels, lambda x: x, epsilon=0.05).tolist()
    assert (wrong, total) == (1, 2)  # the second image is too far from the boundary to flip
    wrong, _ = fgsm_error(model, images, labels, lambda x: x, epsilon=0.001).tolist()
    assert wrong == 0
