"""Upper bounds on the sizes a trial or a spec may ask for: far above any benchmark of the paper.

They make a spec's cost known and bounded before anything is built (a typo of ``epochs: 8000000``
is refused instead of holding a GPU for years). Each bound is at least ten times what the paper's
largest setting needs, with the setting it was checked against.
"""

from __future__ import annotations

# The paper's longest run is 800 epochs (CIFAR, Sec. 4.1); PyTorch-style ImageNet's longest 300.
MAX_EPOCHS = 10_000
# RSB A3 uses 2048 (Table 10), the largest global batch of the paper.
MAX_BATCH_SIZE = 65_536
# The paper trains at 224 px at most; 1024 leaves room for high-resolution fine-tuning.
MAX_IMAGE_SIZE = 1_024
# Images per split of a synthetic data set (the demo uses thousands); also caps subsets.
MAX_SYNTHETIC_IMAGES = 1_000_000
# ImageNet-21k has about 21,000 classes.
MAX_CLASSES = 100_000
# A class name in data.classes: a folder name (file systems allow 255 bytes).
MAX_CLASS_NAME = 255
# Training images kept by a subset: ImageNet-1k has 1.28 M; ImageNet-21k about 14 M.
MAX_IMAGES = 100_000_000
# Seeds are integers of torch.manual_seed's and numpy's common range.
MAX_SEED = 2**31 - 1
# Data-parallel workers of one trial, and CPUs or GPUs per worker.
MAX_WORKERS_PER_TRIAL = 1_024
MAX_CPUS_PER_WORKER = 1_024
MAX_GPUS_PER_WORKER = 64
# Semi-supervised runs count optimisation steps: 2^20 in Sec. 4.4, with room for longer ones.
MAX_STEPS = 2**24
MAX_UNLABELLED_RATIO = 64
