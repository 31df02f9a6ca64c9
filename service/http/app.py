"""``create_app(settings)``: the FastAPI application, built without I/O.

The lifespan starts the runtime (model, journal, feed, pipeline and paper tasks) and stops it
on shutdown — uvicorn turns SIGTERM/SIGINT into that shutdown. A pure-ASGI middleware times
every request into ``apprentice_http_request_duration_seconds`` labelled with the route
template (bounded: unmatched paths share one label). Errors are JSON ``{"detail": ...}``;
an unexpected exception is logged here and answered with a 500 that carries no traceback.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http import docs, model_routes
from service.http import health_routes as api_health
from service.http import routes as api
from service.http.request_limits import MAX_BODY_BYTES, RequestLimits, known_query_only
from service.http.signal_json import SignalBodies
from service.runtime import FeedFactory, Runtime
from service.settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class RequestTimer:
    """Pure ASGI middleware: request duration by route template, method and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram
        # Labelled children resolved once per (route, method, status): ``.labels()`` takes a
        # lock and builds a key on every call, which showed up in the HTTP benchmark.
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "OTHER"  # labels stay bounded
            key = (template, method, status)
            child = self._children.get(key)
            if child is None:
                child = self.histogram.labels(route=template, method=method, status=str(status))
                self._children[key] = child
            child.observe(elapsed)


def create_app(
    settings: Settings,
    *,
    feed_factory: FeedFactory | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The service as an ASGI app; nothing is loaded or connected until the lifespan runs.

    ``feed_factory`` replaces the Bybit feed (tests push klines themselves); ``registry``
    and ``clock`` let tests read metrics and move time; request bodies are limited to
    ``max_body_bytes`` (413).
    """
    rt = Runtime(settings, feed_factory=feed_factory, registry=registry, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await rt.start()
        except BaseException:
            await rt.stop()  # whatever did start (journal thread, tasks) is stopped again
            raise
        log.info(
            "serving %s on interval %s with model %s %s",
            ",".join(settings.symbols),
            settings.interval,
            rt.slot.current.card.name if rt.slot.current else "?",
            rt.slot.current.card.version if rt.slot.current else "?",
        )
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(
        title="Apprentice signal service",
        summary="Direction signals from a feature-distilled student, live on Bybit klines",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from the fastapi-offline wheel, not a CDN (service.http.docs)
        redoc_url=None,
        dependencies=[Depends(known_query_only)],
    )
    docs.install(app)
    app.state.runtime = rt
    app.state.signal_bodies = SignalBodies(settings.vol_regime_threshold)  # GET /signal's JSON
    app.include_router(api.router)
    app.include_router(api.admin_router)
    app.include_router(api_health.router)
    app.include_router(model_routes.router)  # champion and challenger (DESIGN section 12)
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)  # inside the timer
    app.add_middleware(RequestTimer, histogram=rt.metrics.http_request_duration_seconds)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        """The dashboard page (self-contained: no CDN)."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float spelt as text and long strings cut: a request
    can put ``1e400`` (inf) into its body, and FastAPI echoes the input back."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (``{"detail": [{"type", "loc", "msg", "input"}]}``), always encodable:
    the default handler answered 500 when the input held an infinity."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {k: v for k, v in _json_safe(jsonable_encoder(e)).items() if k != "ctx"} for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """The client only learns that it failed; the server logs the traceback (Starlette
    re-raises the exception after this response is sent)."""
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def runtime_of(app: Any) -> Runtime:
    """The runtime container behind an app made by :func:`create_app`."""
    rt: Runtime = app.state.runtime
    return rt
