"""HTTP routes (DESIGN section 6). Every answer is JSON; errors are ``{"detail": ...}``.

Handlers read the runtime container from ``request.app.state.runtime``; nothing here keeps
state. Every handler and dependency is ``async def`` on purpose: they are quick reads of
state the event loop owns, and a sync handler would run in a worker thread (racing the
pipeline and contending for the GIL); the journal is read on its own thread.

Admin routes (model reload, paper reset) need ``Authorization: Bearer <token>`` compared in
constant time, checked before the body is read (:class:`AdminRoute`), and are disabled (403)
when no ``APPRENTICE_ADMIN_TOKEN`` is set. Bad input is a 4xx, never a 500: bodies are
size-limited and a repeated query parameter refused (``service.http.request_limits``), query
integers are digits only, admin inputs are range-checked.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from annotated_types import Ge, Le
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator

from service.http.honesty import policy_note
from service.http.schemas import (
    ErrorOut,
    HealthOut,
    ModelRef,
    PaperOut,
    ReadyOut,
    ReloadIn,
    ReloadOut,
    ResetIn,
    SignalOut,
    SignalsOut,
    SymbolReadiness,
    TradesOut,
    WarmingOut,
)
from service.http.signal_json import SignalBodies
from service.model.card import ModelCard, ModelCardError
from service.paper.account import PaperTrader
from service.runtime import Runtime

router = APIRouter()
SYMBOL_PATTERN = r"^[A-Za-z0-9]{2,20}$"
Symbol = Annotated[
    str,
    PathParam(pattern=SYMBOL_PATTERN, description="Bybit symbol, e.g. BTCUSDT (case-insensitive)"),
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown symbol"},
    422: {"model": ErrorOut, "description": "malformed symbol"},
    503: {"model": ErrorOut, "description": "warming up (see Retry-After)"},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not parsable JSON"},
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    403: {"model": ErrorOut, "description": "admin routes disabled (no APPRENTICE_ADMIN_TOKEN)"},
    413: {"model": ErrorOut, "description": "request body too large"},
}
_DIGITS = re.compile(r"[0-9]{1,9}")


def _whole_number(value: object) -> object:
    """Query integers are decimal digits: ``1.0`` or ``1e2`` is not an integer here."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be a whole number written in digits, e.g. 5")
    return value


# Query integers in their bounds, written in digits. The bounds come before the digits check
# so the published OpenAPI states them as minimum/maximum (after a BeforeValidator pydantic
# would publish the raw ge/le, which no OpenAPI client reads).
HistoryInt = Annotated[int, Ge(0), Le(500), BeforeValidator(_whole_number)]
LimitInt = Annotated[int, Ge(1), Le(10_000), BeforeValidator(_whole_number)]


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def runtime(request: Request) -> Runtime:
    """The app's runtime container."""
    return _runtime(request)


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def require_admin(request: Request) -> None:
    """Bearer-token check in constant time; 403 when admin routes are disabled."""
    token = _runtime(request).settings.admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(
            403, "admin routes are disabled: set APPRENTICE_ADMIN_TOKEN to enable them"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            401,
            "missing or wrong token: send Authorization: Bearer $APPRENTICE_ADMIN_TOKEN",
            headers={"WWW-Authenticate": 'Bearer realm="apprentice-admin"'},
        )


class AdminRoute(APIRoute):
    """A route that changes state: the token is checked before anything reads the body, so
    an unauthenticated request costs no body (and a malformed one without a token is 401)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            require_admin(request)
            return await handler(request)

        return checked


admin_router = APIRouter(route_class=AdminRoute)


def _signal_out(rt: Runtime, symbol: str) -> SignalOut | None:
    signal = rt.store.latest(symbol)
    if signal is None:
        return None
    return SignalOut.of(
        signal,
        rt.age_s(signal.received_ns),
        rt.is_stale(signal),
        rt.settings.vol_regime_threshold,
    )


@router.get(
    "/signal/{symbol}",
    response_model=SignalOut,  # the schema; the body is SignalOut's JSON (service.http.signal_json)
    responses=_ERRORS,
    summary="The latest signal of one symbol",
)
async def get_signal(symbol: Symbol, request: Request) -> Response:
    """Direction, probability and action for the newest closed candle of ``symbol``."""
    # The hottest route reads the runtime directly (a Depends() costs a measurable share of
    # a request here) and answers bytes encoded once per signal, not a model FastAPI
    # validates and serialises per request (make bench, HTTP section).
    rt = _runtime(request)
    sym = symbol.upper()
    if sym not in rt.pipeline.states:
        raise HTTPException(
            404, f"unknown symbol {sym}; this service trades {', '.join(rt.settings.symbols)}"
        )
    signal = rt.store.latest(sym)
    if signal is None:
        st = rt.pipeline.states[sym]
        raise HTTPException(
            503,
            f"{sym} is warming up: {st.bars}/{st.needed} closed candles",
            headers={"Retry-After": str(rt.warm_retry_after_s(sym))},
        )
    bodies: SignalBodies = request.app.state.signal_bodies
    body = bodies.body(signal, rt.age_s(signal.received_ns), rt.is_stale(signal))
    return Response(body, media_type="application/json")


@router.get("/signals", response_model=SignalsOut, summary="Every configured symbol's signal")
async def get_signals(
    rt: RuntimeDep,
    history: Annotated[HistoryInt, Query(description="probability points")] = 0,
) -> SignalsOut:
    """Latest signals; symbols still warming up are listed with their progress."""
    signals, warming = [], []
    for sym in rt.settings.symbols:
        out = _signal_out(rt, sym)
        if out is None:
            st = rt.pipeline.states[sym]
            warming.append(WarmingOut(symbol=sym, bars=st.bars, needed=st.needed))
        else:
            signals.append(out)
    hist = {s: rt.store.history(s, history) for s in rt.settings.symbols} if history else None
    return SignalsOut(interval=rt.settings.interval, signals=signals, warming=warming, history=hist)


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def get_health(rt: RuntimeDep) -> Any:
    """Liveness: 200 while the event loop answers, no service task has died and the paper
    account books its signals (503 with the problems otherwise)."""
    problems = rt.health_problems()
    body = HealthOut(
        status="failing" if problems else "ok",
        uptime_seconds=round(rt.uptime_s(), 3),
        problems=problems,
    )
    if problems:
        return JSONResponse(body.model_dump(), status_code=503)
    return body


@router.get("/ready", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
async def get_ready(rt: RuntimeDep) -> Any:
    """200 only with the model loaded, the feed connected, every symbol warm and fresh."""
    reasons = rt.readiness()
    symbols = {}
    for sym, st in rt.pipeline.states.items():
        signal = rt.store.latest(sym)
        symbols[sym] = SymbolReadiness(
            bars=st.bars,
            needed=st.needed,
            warm=st.warm,
            stale=None if signal is None else rt.is_stale(signal),
            age_seconds=None if signal is None else round(rt.age_s(signal.received_ns), 3),
        )
    body = ReadyOut(
        ready=not reasons,
        reasons=reasons,
        model_loaded=rt.slot.current is not None,
        feed_connected=rt.feed is not None and rt.feed.connected,
        symbols=symbols,
    )
    if reasons:
        return JSONResponse(body.model_dump(), status_code=503)
    return body


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def get_metrics(rt: RuntimeDep) -> Response:
    """Prometheus metrics of this service (its own registry)."""
    rt.refresh_gauges()
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/model", response_model=ModelCard, responses={503: {"model": ErrorOut}})
async def get_model(rt: RuntimeDep) -> ModelCard:
    """The model card of the model now serving."""
    predictor = rt.slot.current
    if predictor is None:
        raise HTTPException(503, "no model loaded yet", headers={"Retry-After": "5"})
    return predictor.card


def _paper(rt: Runtime) -> PaperTrader:
    if rt.trader is None:
        raise HTTPException(404, "paper trading is disabled (APPRENTICE_PAPER_ENABLED=false)")
    return rt.trader


@router.get("/paper", response_model=PaperOut, responses={404: {"model": ErrorOut}})
async def get_paper(rt: RuntimeDep) -> PaperOut:
    """Positions, equity, realised/unrealised PnL, fees and the equity curve."""
    trader = _paper(rt)
    predictor = rt.slot.current
    note = policy_note(rt, predictor.card)["statement"] if predictor is not None else ""
    return PaperOut(enabled=True, policy_note=note, **trader.account.snapshot())


@router.get("/paper/trades", response_model=TradesOut, responses={404: {"model": ErrorOut}})
async def get_trades(
    rt: RuntimeDep,
    limit: Annotated[LimitInt, Query()] = 100,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None,
) -> Response:
    """The current account's fills from the journal, newest first; ``total`` counts the
    fills that match the same filter. Built as JSON on the journal's reader thread
    (``Journal.trades_json``), so a large page never holds the event loop or the GIL long."""
    trader = _paper(rt)
    journal = trader.journal
    sym = symbol.upper() if symbol else None
    if sym is not None and sym not in rt.settings.symbols:  # as /signal/{symbol} answers
        raise HTTPException(404, f"unknown symbol {sym}; configured: {rt.settings.symbols}")
    body = await journal.read(journal.trades_json, trader.account.terms.epoch, sym, limit)
    return Response(body, media_type="application/json")


@admin_router.post(
    "/admin/reload",
    response_model=ReloadOut,
    responses={
        **_ADMIN_ERRORS,
        422: {"model": ErrorOut, "description": "bad model name, or the model was rejected"},
    },
)
async def post_reload(rt: RuntimeDep, body: Annotated[ReloadIn | None, Body()] = None) -> ReloadOut:
    """Validate a model (sha256, feature spec, graph, trial run) and swap it in atomically."""
    path = rt.settings.model
    if body is not None and body.model:
        folder = rt.settings.model.parent.resolve()
        candidate = folder / body.model  # ReloadIn allows a plain file name only
        if candidate.parent != folder or candidate.suffix != ".onnx":
            raise HTTPException(422, f"model must be an .onnx file name in {folder}")
        path = candidate
    try:
        predictor = await rt.reload_model(path)
    except ModelCardError as exc:
        raise HTTPException(422, f"model rejected, the previous one keeps serving: {exc}") from None
    except (OSError, ValueError) as exc:  # a name the file system refuses: still the client's
        raise HTTPException(
            422, f"model {body.model if body else path} cannot be read: {exc}"
        ) from None
    return ReloadOut(
        reloaded=True,
        model=ModelRef(name=predictor.card.name, version=predictor.card.version),
        path=str(predictor.path),
        sha256=predictor.card.sha256,
    )


@admin_router.post(
    "/paper/reset",
    response_model=PaperOut,
    responses={
        **_ADMIN_ERRORS,
        404: {"model": ErrorOut, "description": "paper trading disabled"},
        422: {"model": ErrorOut, "description": "terms out of range"},
    },
)
async def post_paper_reset(
    rt: RuntimeDep, body: Annotated[ResetIn | None, Body()] = None
) -> PaperOut:
    """Open a fresh paper account; the old one's fills stay in the journal."""
    trader = _paper(rt)
    s = rt.settings
    initial = body.initial_usdt if body and body.initial_usdt else s.paper_initial_usdt
    notional = body.notional_usdt if body and body.notional_usdt else s.paper_notional_usdt
    try:
        account = await trader.reset(initial, notional)
    except ValueError as exc:  # terms no account can trade with: nothing was changed
        raise HTTPException(422, str(exc)) from None
    return PaperOut(enabled=True, **account.snapshot())
