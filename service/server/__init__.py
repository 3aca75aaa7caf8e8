"""The sweep service: FastAPI app, sweeps as Ray Jobs, the SQLAlchemy store, its settings.

It never imports the engine (``service.sweep``): a sweep runs in its Ray job, not in the server.
"""
