"""Everything that happens inside one training run: losses, mixing policies, data, the loop.

This package never imports Ray, Ray Tune or MLflow: the sweep service (``service``) drives it.
"""
