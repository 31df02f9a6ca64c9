"""``python -m bench.serve_variant VARIANT``: the real service with one cost taken out.

What-ifs for the HTTP section, measured without editing the service: each variant patches
one thing in memory, then runs ``service.__main__.main`` (same settings, same uvicorn
arguments). They answer "what does this part of the request path cost?":

* ``raw-response``: ``GET /signal`` returns the same ``SignalOut`` already serialised
  (``Response(model_dump_json())``), skipping FastAPI's response_model validation and
  serialisation pass;
* ``no-timer``: the app without its per-request timing middleware (``RequestTimer``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

VARIANTS = ("raw-response", "no-timer")


def patch_raw_response() -> None:
    """Wrap the ``/signal/{symbol}`` endpoint so it returns a ready JSON ``Response``."""
    from fastapi.responses import Response

    from service import api

    for route in api.router.routes:
        endpoint: Callable[..., Any] | None = getattr(route, "endpoint", None)
        if getattr(route, "path", "") != "/signal/{symbol}" or endpoint is None:
            continue

        async def raw(*args: Any, _orig: Any = endpoint, **kwargs: Any) -> Any:
            out = _orig(*args, **kwargs)
            if inspect.isawaitable(out):
                out = await out
            return Response(out.model_dump_json(), media_type="application/json")

        raw.__signature__ = inspect.signature(endpoint, eval_str=True)  # type: ignore[attr-defined]
        raw.__name__ = endpoint.__name__
        route.endpoint = raw  # type: ignore[attr-defined]
        return
    raise RuntimeError("no /signal/{symbol} route in service.api.router")


def patch_no_timer() -> None:
    """Make ``create_app`` drop the ``RequestTimer`` middleware (added before first use)."""
    from service import app as app_module

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
    if variant == "raw-response":
        patch_raw_response()
    elif variant == "no-timer":
        patch_no_timer()
    else:
        print(f"usage: python -m bench.serve_variant {{{','.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    from service.__main__ import main as service_main

    return service_main([])


if __name__ == "__main__":
    sys.exit(main())
