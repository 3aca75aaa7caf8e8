"""The sweep service over HTTP (FastAPI): submit, follow, cancel and resume sweeps.

Every endpoint but ``OPEN_PATHS`` needs ``Authorization: Bearer <token>`` (401 without it, 403
with a wrong one; a client address that sent ``auth_failures`` wrong tokens within
``auth_window_s`` gets 429 with ``Retry-After`` until the oldest of them leaves the window).
Input is never trusted: bodies over 1 MiB get 413, unknown content types 415, specs that fail
the models or the path policy 422 with one entry per failing field, and nothing is created by
a request that is refused. The OpenAPI document is at ``/docs``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service.server.admission import SpecRejectedError
from service.server.ray_jobs import RayJobs, RayUnavailableError
from service.server.settings import IpNetwork, ServiceSettings
from service.server.store import IdempotencyConflictError, SweepStore
from service.server.sweeps import (
    LOG_TAIL_BYTES,
    MAX_LOG_BYTES,
    SpecStorageError,
    StateConflictError,
    SweepNotFoundError,
    SweepService,
    TooManySweepsError,
)
from service.spec.reading import MAX_BYTES, SpecInputError

log = logging.getLogger("dmsweep.api")
# How uvicorn must serve the app: the client address is the app's to find (``client_address``),
# from the proxies the operator lists; uvicorn's own X-Forwarded-For handling trusts 127.0.0.1
# by default, which would let anyone behind a same-host proxy name any address.
PROXY_HEADERS = False
MAX_TRACKED_ADDRESSES = 10_000  # bounds the failed-authentication table (oldest dropped first)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
READINESS_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 3.0  # Ray's and MLflow's reachability, reported by /readyz without failing it
PAGE_SIZE = 100  # sweeps per page of GET /sweeps unless asked otherwise
MAX_PAGE_SIZE = 500


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


class SweepDetail(SweepView):
    """One sweep with its plan: device-hours, wall time and cost (``dmsweep plan``)."""

    plan: dict[str, Any] | None = Field(
        None,
        description="made when it was submitted, from the service's calibration table; "
        '{"error": why} when none could be made; null for sweeps submitted before plans',
    )


class _RefusedError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail


def client_address(scope: Scope, trusted: Sequence[IpNetwork]) -> str:
    """The client's address as the service sees it.

    The peer's own, unless the peer is a proxy the operator trusts: then the last hop of
    X-Forwarded-For that is not a trusted proxy (earlier hops are the client's own claims).
    """
    peer = scope["client"][0] if scope.get("client") else "unknown"
    if not trusted or not _within(peer, trusted):
        return peer
    headers = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
    hops = [h.strip() for h in b",".join(headers).decode("latin-1").split(",") if h.strip()]
    address = peer
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop if _is_ip(hop) else address
        address = hop
    return address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(text: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(address in network for network in networks)


class FailedAuthentications:
    """Wrong tokens per client address within a sliding window, in a table of bounded size.

    Used by the middleware on the event loop only (one thread): no lock. Each address keeps at
    most ``limit`` times; past ``max_addresses`` the address seen least recently is forgotten.
    """

    def __init__(self, limit: int, window_s: float, max_addresses: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        times = self._times.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._times[address]
            return None
        return times[0] + self.window_s - now if len(times) >= self.limit else None

    def failed(self, address: str, now: float) -> None:
        """Count a wrong token from ``address``."""
        times = self._times.pop(address, None) or deque(maxlen=self.limit)
        times.append(now)
        self._times[address] = times  # now the most recently seen
        while len(self._times) > self.max_addresses:
            self._times.popitem(last=False)

    def __len__(self) -> int:
        """How many addresses the table holds."""
        return len(self._times)


class BearerAuth:
    """ASGI middleware: every path but ``OPEN_PATHS`` needs the service's bearer token."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        failures: FailedAuthentications | None = None,
        trusted_proxies: Sequence[IpNetwork] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.failures = failures
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401 / 403 / 429 without reading its body."""
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        address = client_address(scope, self.trusted_proxies)
        now = time.monotonic()
        wait = self.failures.retry_after(address, now) if self.failures else None
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if wait is not None:
            # Answered before the token is compared: a blocked address learns nothing more.
            seconds = max(1, math.ceil(wait))
            response: Response = JSONResponse(
                {"detail": f"too many wrong tokens from {address}; try again in {seconds} s"},
                status_code=429,
                headers={"Retry-After": str(seconds)},
            )
        elif scheme.lower() != b"bearer" or not given:
            response = JSONResponse(
                {"detail": "missing credentials: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif not hmac.compare_digest(given.strip(), self.token):
            if self.failures is not None:
                self.failures.failed(address, now)
            log.warning("a wrong API token from %s", address)
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


async def _probe(status: Callable[[], str]) -> str:
    """``status()`` run off the event loop, or ``no answer`` after ``PROBE_TIMEOUT_S``."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(status), PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:
        return f"no answer in {PROBE_TIMEOUT_S:g} s"


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
    app.add_middleware(
        BearerAuth,
        token=settings.api_token if require_token else None,
        failures=FailedAuthentications(
            settings.auth_failures, settings.auth_window_s, MAX_TRACKED_ADDRESSES
        ),
        trusted_proxies=settings.trusted_proxies,
    )

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

    @app.exception_handler(TooManySweepsError)
    async def too_many(request: Request, error: TooManySweepsError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error)},
            status_code=429,
            headers={"Retry-After": str(error.retry_after_s)},
        )

    @app.exception_handler(SpecStorageError)
    async def unwritable(request: Request, error: SpecStorageError) -> JSONResponse:
        log.error("%s", error)
        return JSONResponse({"detail": str(error)}, status_code=500)

    @app.exception_handler(RayUnavailableError)
    async def ray_down(request: Request, error: RayUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (no token needed).

        On the event loop: it never waits for a worker thread, the database, Ray or MLflow.
        """
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness (no token needed): 503 only when the database cannot be reached.

        Ray's and MLflow's reachability are reported without failing: sweeps wait queued for
        Ray, and trials buffer what MLflow does not take.
        """
        try:
            await asyncio.wait_for(asyncio.to_thread(service.ping_database), READINESS_TIMEOUT_S)
        except asyncio.TimeoutError:
            detail = f"no answer in {READINESS_TIMEOUT_S:g} s"
            return JSONResponse({"status": "unready", "database": detail}, status_code=503)
        except Exception as error:  # the database's driver raises its own errors
            detail = f"unreachable ({type(error).__name__})"
            return JSONResponse({"status": "unready", "database": detail}, status_code=503)
        # Ray and MLflow at once, each with its own bound: a hung one is reported, never a 503.
        ray, mlflow = await asyncio.gather(
            _probe(service.ray_status), _probe(service.mlflow_status)
        )
        return JSONResponse({"status": "ready", "database": "ok", "ray": ray, "mlflow": mlflow})

    @app.post(
        "/sweeps",
        status_code=201,
        response_model=SweepDetail,
        responses={
            200: {"description": "a retried submit (same Idempotency-Key and body)"},
            429: {
                "description": "the service has DMSWEEP_MAX_ACTIVE_SWEEPS active sweeps already; "
                "Retry-After says when to try again"
            },
        },
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

    @app.get(
        "/sweeps",
        response_model=list[SweepView],
        responses={
            200: {
                "description": "one page of sweeps, newest first",
                "headers": {
                    "X-Next-Cursor": {
                        "description": "when more sweeps follow: pass it as ?cursor= for the "
                        "next page (absent on the last page)",
                        "schema": {"type": "string"},
                    },
                    "Link": {
                        "description": 'the next page\'s URL, rel="next" (RFC 8288)',
                        "schema": {"type": "string"},
                    },
                },
            }
        },
    )
    def list_sweeps(
        response: Response,
        limit: Annotated[
            int,
            Query(ge=1, le=MAX_PAGE_SIZE, description=f"sweeps per page, 1 to {MAX_PAGE_SIZE}"),
        ] = PAGE_SIZE,
        cursor: Annotated[
            str | None,
            Query(
                max_length=200,
                description="the X-Next-Cursor of the previous page (default: the first page)",
            ),
        ] = None,
    ) -> list[dict[str, Any]]:
        """Sweeps, newest first, one page at a time (``limit``, ``cursor``)."""
        try:  # one more than asked: whether a next page exists, without a count
            rows = service.store.page(limit + 1, after=cursor)
        except KeyError:
            raise _RefusedError(
                400, f"cursor {cursor!r} names no sweep; use the X-Next-Cursor of a page"
            ) from None
        if len(rows) > limit:
            rows = rows[:limit]
            following = rows[-1].sweep_id
            response.headers["X-Next-Cursor"] = following
            query = urlencode({"limit": limit, "cursor": following})
            response.headers["Link"] = f'</sweeps?{query}>; rel="next"'
        return [service.view(row) for row in rows]

    @app.get("/sweeps/{sweep_id}", response_model=SweepDetail)
    def get_sweep(sweep_id: str) -> dict[str, Any]:
        """One sweep: state, trials, best result so far, Ray job, MLflow run."""
        return service.view(service.refresh(sweep_id))

    @app.post("/sweeps/{sweep_id}/cancel", response_model=SweepDetail)
    def cancel(sweep_id: str) -> dict[str, Any]:
        """Stop a sweep's Ray job (409 once it has ended)."""
        return service.view(service.cancel(sweep_id))

    @app.post("/sweeps/{sweep_id}/resume", response_model=SweepDetail)
    def resume(sweep_id: str) -> dict[str, Any]:
        """Continue a failed or cancelled sweep; finished trials are kept (409 otherwise)."""
        return service.view(service.resume(sweep_id))

    @app.get("/sweeps/{sweep_id}/report", response_class=PlainTextResponse)
    def report(sweep_id: str) -> PlainTextResponse:
        """The paper-style table (Markdown) of the trials finished so far."""
        return PlainTextResponse(service.report(sweep_id), media_type="text/markdown")

    @app.get(
        "/sweeps/{sweep_id}/logs",
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "a part of the log",
                "headers": {
                    "X-Log-Offset": {
                        "description": "the byte of the log the text starts at",
                        "schema": {"type": "integer"},
                    },
                    "X-Log-Size": {
                        "description": "the log's whole size in bytes",
                        "schema": {"type": "integer"},
                    },
                },
            }
        },
    )
    def logs(
        sweep_id: str,
        trial: Annotated[
            str | None,
            Query(
                max_length=200,
                description="a trial id, a whole trial name, or a prefix of exactly one",
            ),
        ] = None,
        offset: Annotated[
            int | None,
            Query(ge=0, description="the first byte to send (default: the log's last bytes)"),
        ] = None,
        max_bytes: Annotated[
            int,
            Query(
                ge=1,
                le=MAX_LOG_BYTES,
                description=f"at most this many bytes, up to {MAX_LOG_BYTES:,}",
            ),
        ] = LOG_TAIL_BYTES,
    ) -> PlainTextResponse:
        """The sweep's Ray job output, or with ``trial`` one trial's log: its last 1 MiB.

        ``offset`` and ``max_bytes`` ask for another part; ``X-Log-Offset`` and ``X-Log-Size``
        say which part this is, so earlier bytes can be asked for.
        """
        part = service.logs(sweep_id, trial, offset, max_bytes)
        headers = {"X-Log-Offset": str(part.offset), "X-Log-Size": str(part.size)}
        return PlainTextResponse(part.text, headers=headers)

    return app


def _first_refresh(service: SweepService) -> None:
    try:  # before the first queued sweep is submitted (each job's driver also prepares it)
        service.prepare_tracking()
    except Exception:
        log.exception("preparing the MLflow store failed; each sweep's driver tries again")
    try:
        service.refresh_active()
    except Exception:
        log.exception("reading the sweeps' states at start failed; the poller tries again")
