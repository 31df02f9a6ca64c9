"""``python -m service``: run the signal service (configuration from APPRENTICE_* variables).

Settings are parsed once here and passed down. A bad setting or a model that does not match
its card refuses to start with a message that says what to fix (exit status 2); uvicorn
turns SIGTERM/SIGINT into a graceful shutdown of the lifespan.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.settings import Settings, SettingsError, load_settings

EPILOG = """\
configuration (environment variables):
  APPRENTICE_SYMBOLS        comma-separated Bybit linear symbols   (BTCUSDT)
  APPRENTICE_INTERVAL       kline interval: 1,3,5,15,30,60,...     (5)
  APPRENTICE_WS_URL         public websocket                       (Bybit mainnet)
  APPRENTICE_REST_URL       REST base URL for backfill             (Bybit mainnet)
  APPRENTICE_MODEL          student .onnx; its card is the .json beside it
  APPRENTICE_STATE_DIR      paper-trading journal directory        (state)
  APPRENTICE_HOST / _PORT   where to listen                        (127.0.0.1:8000)
  APPRENTICE_ADMIN_TOKEN    enables POST /admin/reload and /paper/reset (Bearer token)
  APPRENTICE_LONG_THRESHOLD, APPRENTICE_SHORT_THRESHOLD, APPRENTICE_PAPER_* ...
  (every field of service.settings.Settings, upper-cased with the prefix)

routes: /signal/{symbol} /signals /health /ready /metrics /model /paper /paper/trades,
        the dashboard at /, the OpenAPI docs at /docs
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line (configuration itself comes from the environment)."""
    return argparse.ArgumentParser(
        prog="python -m service",
        description="Apprentice signal service: Bybit klines -> features -> ONNX student -> "
        "signals over HTTP, paper trading and Prometheus metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def precheck(settings: Settings) -> None:
    """Refuse to start, before binding the port, on a model that does not match its card or
    a state directory where the paper journal cannot be written."""
    from service.journal import Journal, JournalError
    from service.model_card import ModelCardError
    from service.predictor import Predictor

    try:
        Predictor.load(settings.model, settings.model_card_path)
        if settings.paper_enabled:
            journal = Journal(settings.state_dir)
            journal.open()
            journal.close()
    except (ModelCardError, JournalError) as exc:
        raise SettingsError(f"refusing to start: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Parse, check, serve until SIGTERM/SIGINT."""
    build_parser().parse_args(argv)
    try:
        settings = load_settings()
        precheck(settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from service.app import create_app
    from service.connection_limits import uvicorn_options

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # request metrics live in Prometheus; keep the log for events
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings),  # header timeout, connection cap, keep-alive
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
