"""``python -m bench.serve {service,bare} --port P``: one app under the shared uvicorn settings.

The HTTP comparison serves the real service (``create_app(load_settings())``, configured by
``APPRENTICE_*`` variables) and a bare FastAPI app with one constant route through exactly
the same ``uvicorn.run`` arguments, so only the application differs.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

# The same server settings for both apps (one worker process, uvloop + httptools when
# installed, no access log: the service logs nothing per request either).
UVICORN_KW: dict[str, Any] = {
    "host": "127.0.0.1",
    "log_level": "warning",
    "access_log": False,
    "loop": "auto",
    "http": "auto",
    "lifespan": "on",
}
BARE_BODY = {
    "symbol": "BTCUSDT",
    "interval": "5",
    "direction": "up",
    "probability_up": 0.5123,
    "confidence": 0.0246,
    "action": "flat",
}


def bare_app() -> FastAPI:
    """One constant route: the cheapest JSON answer FastAPI can give on this server."""
    app = FastAPI()

    @app.get("/signal/{symbol}")
    async def signal(symbol: str) -> dict[str, Any]:
        return BARE_BODY

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def service_app() -> FastAPI:
    """The real service, configured from the environment."""
    from service.app import create_app
    from service.settings import load_settings

    return create_app(load_settings())


def main() -> None:
    """Run one app until SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m bench.serve")
    ap.add_argument("app", choices=("service", "bare"))
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    app = service_app() if args.app == "service" else bare_app()
    uvicorn.run(app, port=args.port, **UVICORN_KW)


if __name__ == "__main__":
    main()
