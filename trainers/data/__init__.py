"""Data sources for training runs.

Each gives uint8 images (N, C, H, W), int64 labels and the class names; augmentation and
normalisation happen on batches, on the training device.
"""
