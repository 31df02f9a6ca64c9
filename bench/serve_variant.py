"""``python -m bench.serve_variant VARIANT``: the real service with one cost taken out.

What-ifs for the HTTP section, measured without editing the service: each variant patches
one thing in memory, then runs ``service.__main__.main`` (same settings, same uvicorn
arguments). They answer "what does this part of the request path cost?":

* ``model-response``: ``GET /signal`` as it was before its body was encoded once per signal
  (``service.http.signal_json``): the route returns a ``SignalOut`` that FastAPI validates and
  serialises per request (its ``response_model`` pass);
* ``no-timer``: the app without its per-request timing middleware (``RequestTimer``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

VARIANTS = ("model-response", "no-timer")


def patch_model_response() -> None:
    """Replace the ``/signal/{symbol}`` endpoint with one that returns a ``SignalOut``."""
    from fastapi import Request

    from service.http import routes as api
    from service.http.schemas import SignalOut

    for route in api.router.routes:
        endpoint: Callable[..., Any] | None = getattr(route, "endpoint", None)
        if getattr(route, "path", "") != "/signal/{symbol}" or endpoint is None:
            continue

        async def model(symbol: str, request: Request, _orig: Any = endpoint) -> Any:
            rt = request.app.state.runtime
            sym = symbol.upper()
            signal = rt.store.latest(sym) if sym in rt.pipeline.states else None
            if signal is None:
                return await _orig(symbol, request)  # the 404 and 503 answers, unchanged
            return SignalOut.of(
                signal,
                rt.age_s(signal.received_ns),
                rt.is_stale(signal),
                rt.settings.vol_regime_threshold,
            )

        sig = inspect.signature(endpoint, eval_str=True)
        model.__signature__ = sig.replace(return_annotation=SignalOut)  # type: ignore[attr-defined]
        model.__name__ = endpoint.__name__
        route.endpoint = model  # type: ignore[attr-defined]
        return
    raise RuntimeError("no /signal/{symbol} route in service.http.routes.router")


def patch_no_timer() -> None:
    """Make ``create_app`` drop the ``RequestTimer`` middleware (added before first use)."""
    from service.http import app as app_module

    original = app_module.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = original(*args, **kwargs)
        app.user_middleware = [
            m for m in app.user_middleware if getattr(m, "cls", None) is not app_module.RequestTimer
        ]
        return app

    app_module.create_app = create_app


def main() -> int:
    """Patch, then run the service's own entry point."""
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    if variant == "model-response":
        patch_model_response()
    elif variant == "no-timer":
        patch_no_timer()
    else:
        print(f"usage: python -m bench.serve_variant {{{','.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    from service.__main__ import main as service_main

    return service_main([])


if __name__ == "__main__":
    sys.exit(main())
