"""``python -m bench.serve --port P``: a bare FastAPI app under the service's uvicorn settings.

The HTTP comparison runs the real service as users run it (``python -m service``) beside
this app: one constant route, served with the same ``uvicorn.run`` arguments that
``service/__main__.py`` passes, so only the application differs.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

# Mirrors service/__main__.py's uvicorn.run(...) (one worker process; loop/http "auto" =
# uvloop + httptools when installed; no access log); log level as the benchmark sets
# APPRENTICE_LOG_LEVEL for the service.
UVICORN_KW: dict[str, Any] = {
    "host": "127.0.0.1",
    "log_level": "warning",
    "access_log": False,
    "timeout_graceful_shutdown": 10,
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


def main() -> None:
    """Serve the bare app until SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m bench.serve")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(bare_app(), port=args.port, **UVICORN_KW)


if __name__ == "__main__":
    main()
