"""The train and test splits a trial opens, as its data settings say."""

from __future__ import annotations

from functools import partial

from trainers.config import TrainConfig
from trainers.data import ImageSource, open_dataset, subset
from trainers.data.loader import eval_crops, in_memory
from trainers.recipes import Recipe
from trainers.transforms import eval_sample_transform


def open_splits(
    config: TrainConfig, recipe: Recipe, *, keep_labels: bool = False
) -> tuple[ImageSource, ImageSource, bool]:
    """Train and test splits, and whether the test images come already cropped for evaluation.

    The train split drops the labels ``data.label_fraction`` does not keep, unless
    ``keep_labels`` (a semi-supervised run draws its labelled images itself, and keeps the
    others' labels to measure its pseudo-labels with).

    A test split that decodes per image (originals of varying size) is seen through Table 10's
    evaluation transform (shorter side to size / crop_pct, centre crop), decoded once.
    """
    data = config.data
    open_split = partial(
        open_dataset,
        data.name,
        source=data.source,
        root=data.root,
        image_size=data.image_size,
        classes=data.classes,
        seed=config.seed,
        synthetic=(
            {"num_classes": data.num_classes, "images": data.synthetic_images}
            if data.name == "synthetic"
            else None
        ),
    )
    fraction = None if keep_labels else data.label_fraction
    train = open_split("train", subset=data.subset, label_fraction=fraction)
    test = open_split("test")
    if data.test_subset is not None:
        test = subset(test, data.test_subset, seed=config.seed)
    if in_memory(test):
        return train, test, False
    size = train.image_size
    return train, eval_crops(test, eval_sample_transform(size, recipe.test_crop), size), True
