"""``python -m service``: run the signal service (configuration from APPRENTICE_* variables).

Settings are parsed once here and passed down. A bad setting or a model that does not match
its card refuses to start with a message that says what to fix (exit status 2); uvicorn
turns SIGTERM/SIGINT into a graceful shutdown of the lifespan.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from service.settings import Settings, SettingsError, load_settings, redact_logs, scrub

ROUTES = """\
routes: /signal/{symbol} /signals /health /ready /metrics /model /paper /paper/trades,
        POST /admin/reload and /paper/reset (admin token), the dashboard at /, the OpenAPI
        docs at /docs
"""


def env_var(field: str) -> str:
    """``port`` -> ``APPRENTICE_PORT``."""
    return f"APPRENTICE_{field.upper()}"


def _default(field: str) -> str:
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "unset" if value is None else str(value)


def settings_help() -> str:
    """Every setting: its variable, its default and what it means (from the Settings model)."""
    lines = ["configuration (environment variables; default in brackets):"]
    for field, info in Settings.model_fields.items():
        lines.append(f"  {env_var(field)}  [{_default(field)}]")
        if info.description:
            lines += textwrap.wrap(
                info.description, 88, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines) + "\n\n" + ROUTES


def build_parser() -> argparse.ArgumentParser:
    """The command line (configuration itself comes from the environment)."""
    return argparse.ArgumentParser(
        prog="python -m service",
        description=textwrap.fill(
            "Apprentice signal service: Bybit klines -> features -> ONNX student -> signals "
            "over HTTP, paper trading and Prometheus metrics. It takes no options: every "
            "setting is an APPRENTICE_* environment variable, e.g. "
            "APPRENTICE_PORT=8010 python -m service",
            88,
        ),
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_args(argv: list[str] | None) -> None:
    """``--help``; anything else is refused, a setting given as a flag with its variable."""
    parser = build_parser()
    _, unknown = parser.parse_known_args(argv)
    if not unknown:
        return
    name, _, value = unknown[0].lstrip("-").partition("=")
    field = name.replace("-", "_").lower()
    if unknown[0].startswith("-") and field in Settings.model_fields:
        if not value and len(unknown) > 1 and not unknown[1].startswith("-"):
            value = unknown[1]
        example = f"{env_var(field)}={value or '...'}"
        parser.exit(
            2,
            f"python -m service takes settings from the environment, not flags: "
            f"{example} python -m service (python -m service --help lists them)\n",
        )
    parser.error(
        f"unrecognized arguments: {' '.join(unknown)} (settings are APPRENTICE_* variables)"
    )


def precheck(settings: Settings) -> None:
    """Refuse to start, before binding the port, on an address that cannot be listened on, a
    model that does not match its card or a state directory where the paper journal cannot
    be written."""
    from service.http.listen import listen_problem
    from service.model.card import ModelCardError
    from service.model.predictor import Predictor
    from service.monitor.signal_journal import JournalOpenError, SignalJournal
    from service.paper.journal import Journal, JournalError

    try:
        Predictor.load(settings.model, settings.model_card_path)
        if settings.paper_enabled:
            journal = Journal(settings.state_dir)
            journal.open()
            journal.close()
        # the signal journal too: damaged or read-only is exit 2 with a message, not a
        # traceback from the lifespan (exit 3, which a supervisor restarts in a loop)
        signals = SignalJournal(settings.state_dir)
        signals.open()
        signals.close()
    except (ModelCardError, JournalError, JournalOpenError) as exc:
        raise SettingsError(f"refusing to start: {exc}") from None
    # last, as close to uvicorn's bind as it gets: a port taken meanwhile still fails there
    problem = listen_problem(settings.host, settings.port, "APPRENTICE_HOST", "APPRENTICE_PORT")
    if problem is not None:
        raise SettingsError(f"refusing to start: {problem}")


def main(argv: list[str] | None = None) -> int:
    """Parse, check, serve until SIGTERM/SIGINT."""
    parse_args(argv)
    try:
        settings = load_settings()
        precheck(settings)
    except SettingsError as exc:
        print(scrub(str(exc)), file=sys.stderr)  # a start-up check may name a path or a host
        return 2
    redact_logs(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from service.http.app import create_app
    from service.http.connection_limits import uvicorn_options

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
