"""The sweep service over HTTP (FastAPI): submit, follow, cancel and resume sweeps.

Every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>`` (401 without it, 403
with a wrong one). Input is never trusted: bodies over 1 MiB get 413, unknown content types
415, specs that fail the models or the path policy 422 with one entry per failing field, and
nothing is created by a request that is refused. The OpenAPI document is at ``/docs``.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service.server.ray_jobs import RayJobs, RayUnavailableError
from service.server.settings import ServiceSettings
from service.server.store import IdempotencyConflictError, SweepStore
from service.server.sweeps import (
    SpecRejectedError,
    StateConflictError,
    SweepNotFoundError,
    SweepService,
)
from service.spec.reading import MAX_BYTES, SpecInputError

log = logging.getLogger("dmsweep.api")
OPEN_PATHS = frozenset({"/healthz"})


class TrialCounts(BaseModel):
    """Trials of a sweep."""

    done: int
    running: int
    failed: int
    total: int


class SweepView(BaseModel):
    """A sweep as the service shows it."""

    id: str
    name: str
    state: str
    message: str | None
    trials: TrialCounts
    best: dict[str, Any] | None
    ray_job_id: str | None
    mlflow_run_url: str | None
    folder: str | None
    created_at: str
    updated_at: str


class _RefusedError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail


class BearerAuth:
    """ASGI middleware: every path but ``OPEN_PATHS`` needs the service's bearer token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401 / 403 without reading its body."""
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            response: Response = JSONResponse(
                {"detail": "missing credentials: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not hmac.compare_digest(given.strip(), self.token):
            response = JSONResponse({"detail": "the token is not valid"}, status_code=403)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


async def _read_body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes ``MAX_BYTES``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise _RefusedError(
            413, f"the body is {int(declared):,} bytes; at most {MAX_BYTES:,} (1 MiB)"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BYTES:
            raise _RefusedError(413, f"the body is over {MAX_BYTES:,} bytes (1 MiB)")
        chunks.append(chunk)
    return b"".join(chunks)


def _poll(service: SweepService, stop: threading.Event) -> None:
    """Follow the Ray jobs of unfinished sweeps, also while no one asks."""
    while not stop.wait(service.settings.poll_s):
        try:
            service.refresh_active()
        except Exception:  # a database or Ray hiccup must not end the poller
            log.exception("refreshing the sweeps' states failed; trying again")


def create_app(settings: ServiceSettings, *, require_token: bool = True) -> FastAPI:
    """The sweep service's API over the store and Ray cluster named by ``settings``.

    Args:
        settings: where sweeps, the store, Ray's job server and MLflow are
            (``ServiceSettings.from_env`` reads the ``DMSWEEP_*`` variables).
        require_token: refuse to build an app without a bearer token (``--insecure-no-auth``
            turns it off for local use).

    Example::

        app = create_app(ServiceSettings.from_env())
        uvicorn.run(app, host="127.0.0.1", port=8000)

    """
    if require_token and not settings.api_token:
        raise ValueError(
            "no API token: set DMSWEEP_API_TOKEN or DMSWEEP_API_TOKEN_FILE (or, for local use "
            "only, start with --insecure-no-auth)"
        )
    store = SweepStore(settings.database_url)
    service = SweepService(settings, store, RayJobs(settings.ray_address, settings.ray_token))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        # Sweeps that ran on while the service was down are read back at once.
        poller = threading.Thread(target=_poll, args=(service, stop), daemon=True)
        poller.start()
        threading.Thread(target=_first_refresh, args=(service,), daemon=True).start()
        yield
        stop.set()
        poller.join(timeout=10)
        store.close()

    app = FastAPI(
        title="dmsweep",
        summary="Sweeps of Decoupled Mixup on a Ray cluster, tracked in MLflow.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BearerAuth, token=settings.api_token if require_token else None)

    @app.exception_handler(_RefusedError)
    async def refused(request: Request, error: _RefusedError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @app.exception_handler(SpecInputError)
    async def unreadable(request: Request, error: SpecInputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(SpecRejectedError)
    async def rejected(request: Request, error: SpecRejectedError) -> JSONResponse:
        detail = [{"loc": p.where, "msg": p.message} for p in error.problems]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(SweepNotFoundError)
    async def not_found(request: Request, error: SweepNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(StateConflictError)
    @app.exception_handler(IdempotencyConflictError)
    async def conflict(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(RayUnavailableError)
    async def ray_down(request: Request, error: RayUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (no token needed)."""
        return {"status": "ok"}

    @app.post(
        "/sweeps",
        status_code=201,
        response_model=SweepView,
        responses={200: {"description": "a retried submit (same Idempotency-Key and body)"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-yaml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def submit(
        request: Request,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Submit a sweep spec (YAML or JSON); it runs as a Ray job."""
        body = await _read_body(request)
        try:
            view, created = await run_in_threadpool(
                service.submit, body, request.headers.get("content-type"), idempotency_key
            )
        except ValueError as error:
            if isinstance(error, (SpecInputError, SpecRejectedError)):
                raise
            raise _RefusedError(400, str(error)) from None
        return JSONResponse(view, status_code=201 if created else 200)

    @app.get("/sweeps", response_model=list[SweepView])
    def list_sweeps() -> list[dict[str, Any]]:
        """Every sweep, newest first."""
        return [service.view(row) for row in service.store.all()]

    @app.get("/sweeps/{sweep_id}", response_model=SweepView)
    def get_sweep(sweep_id: str) -> dict[str, Any]:
        """One sweep: state, trials, best result so far, Ray job, MLflow run."""
        return service.view(service.refresh(sweep_id))

    @app.post("/sweeps/{sweep_id}/cancel", response_model=SweepView)
    def cancel(sweep_id: str) -> dict[str, Any]:
        """Stop a sweep's Ray job (409 once it has ended)."""
        return service.view(service.cancel(sweep_id))

    @app.post("/sweeps/{sweep_id}/resume", response_model=SweepView)
    def resume(sweep_id: str) -> dict[str, Any]:
        """Continue a failed or cancelled sweep; finished trials are kept (409 otherwise)."""
        return service.view(service.resume(sweep_id))

    @app.get("/sweeps/{sweep_id}/report", response_class=PlainTextResponse)
    def report(sweep_id: str) -> PlainTextResponse:
        """The paper-style table (Markdown) of the trials finished so far."""
        return PlainTextResponse(service.report(sweep_id), media_type="text/markdown")

    @app.get("/sweeps/{sweep_id}/logs", response_class=PlainTextResponse)
    def logs(
        sweep_id: str,
        trial: Annotated[str | None, Query(max_length=200)] = None,
    ) -> PlainTextResponse:
        """The sweep's Ray job output, or with ``trial`` one trial's log."""
        return PlainTextResponse(service.logs(sweep_id, trial))

    return app


def _first_refresh(service: SweepService) -> None:
    try:
        service.refresh_active()
    except Exception:
        log.exception("reading the sweeps' states at start failed; the poller tries again")
