"""``python -m service.cli``: what a sweep's Ray job runs (``service.server.ray_jobs``)."""

from service.cli.app import app

app()
