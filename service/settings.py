"""Service settings: environment variables with the ``APPRENTICE_`` prefix, parsed once.

``python -m service`` builds one :class:`Settings` and passes it down; nothing reads the
environment anywhere else. A bad value refuses to start with a message naming the variable
and what to put there (:func:`load_settings`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from service.market.bybit import short
from service.market.klines import VALID_INTERVALS
from service.market.limits import DEFAULT_REST_PER_WINDOW, REST_LIMIT_PER_WINDOW

MAINNET_WS = "wss://stream.bybit.com/v5/public/linear"
MAINNET_REST = "https://api.bybit.com"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "student_pooled_5m.onnx"
_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}$")
_HOST = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")  # a host name, IPv4 or IPv6 address
# DESIGN section 13: 500 symbols per process, and 1000 keep up (issue 30). Past ~800
# five-minute topics the feed opens a second websocket (Bybit's 21,000-character args limit
# per connection, service.market.limits); each symbol is one REST warm-up request, under the
# process's REST bucket (APPRENTICE_REST_PER_5S: 1000 symbols warm up in ~15 s at 400).
# More: shard the symbol list over several services.
MAX_SYMBOLS = 1000
MIN_TOKEN = 12  # characters: "a" or " " is not a secret
MAX_URL = 2048
MAX_PATH = 1024  # characters; each part at most 255 (what file systems take)


class SettingsError(SystemExit):
    """Configuration that cannot start the service; the message says what to fix."""


class Settings(BaseSettings):
    """Everything the service can be told, with mainnet defaults."""

    model_config = SettingsConfigDict(env_prefix="APPRENTICE_", extra="ignore", frozen=True)

    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTCUSDT"],
        description="comma-separated Bybit linear symbols, e.g. BTCUSDT,ETHUSDT",
    )
    interval: str = Field("5", description="kline interval, Bybit spelling: 1,3,5,15,30,60,...")
    ws_url: str = Field(MAINNET_WS, description="public websocket (ws:// or wss://)")
    rest_url: str = Field(MAINNET_REST, description="REST base URL for the backfill")
    model: Path = Field(
        DEFAULT_MODEL, description="the student .onnx; its model card is the .json beside it"
    )
    state_dir: Path = Field(Path("state"), description="paper-trading journal (SQLite) directory")
    host: str = Field("127.0.0.1", description="HTTP listen address (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="HTTP listen port (0: any free one)")
    admin_token: SecretStr | None = Field(
        None,
        description=f"Bearer token for POST /admin/reload and /paper/reset (unset: disabled); "
        f"at least {MIN_TOKEN} characters, no spaces",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )

    # market data
    backfill_bars: int = Field(
        600,
        ge=60,
        le=5000,
        description="closed candles fetched by REST at start and after gaps: the signal "
        "horizon plus 300, so a restart after up to 300 missed candles publishes each of "
        "them with the full horizon behind it (one request per symbol)",
    )
    signal_horizon_bars: int = Field(
        300,
        ge=1,
        le=5000,
        description="closed candles of history before a symbol's first signal is published: "
        "RSI has infinite memory and features match the full history's only after ~300 "
        "(fewer than a full window, 79, means 79)",
    )
    rest_per_5s: int = Field(
        DEFAULT_REST_PER_WINDOW,
        ge=10,
        le=REST_LIMIT_PER_WINDOW - 50,
        description=f"REST requests in any 5 s at most, every symbol together (Bybit bans an "
        f"IP past {REST_LIMIT_PER_WINDOW} for 10 minutes; 10 to {REST_LIMIT_PER_WINDOW - 50})",
    )
    queue_size: int = Field(4096, ge=16, le=1_000_000, description="feed -> pipeline queue length")
    ping_interval_s: float = Field(
        20.0, ge=1.0, le=300.0, description="websocket JSON ping every N seconds (1 to 300)"
    )
    stale_after_intervals: float = Field(
        2.0, ge=1.0, le=1000, description="signal stale after N intervals"
    )

    # signals and paper trading
    long_threshold: float = Field(0.55, gt=0, lt=1, description="probability_up >= this: long")
    short_threshold: float = Field(
        0.45, gt=0, lt=1, description="probability_up <= this: short (else flat)"
    )
    paper_enabled: bool = Field(True, description="paper-trade the signals (true/false)")
    policy: Literal["direction", "fee_aware", "vol_managed", "flat"] | None = Field(
        None,
        description="trading policy of the paper account (default: the model card's, chosen "
        "on validation bars; flat when the card names none)",
    )
    # the bounds of service.paper.account.check_terms: an account outside them could not trade
    paper_initial_usdt: float = Field(10_000.0, ge=1.0, le=1e12, description="a new account's USDT")
    paper_notional_usdt: float = Field(
        1_000.0, ge=1.0, le=1e12, description="position size per symbol"
    )
    paper_fee_bps: float = Field(5.5, ge=0, le=1000, description="taker fee per fill, bps")
    paper_slippage_bps: float = Field(1.0, ge=0, le=1000, description="adverse fill slippage, bps")

    # HTTP server limits (service.http.connection_limits): idle sockets cannot exhaust descriptors
    http_max_connections: int = Field(
        512, ge=8, le=100_000, description="open connections at most (fewer if ulimit -n is low)"
    )
    http_header_timeout_s: float = Field(
        10.0,
        ge=0.5,
        le=600,
        description="close a connection whose request headers take longer (0.5 to 600 s)",
    )
    http_keep_alive_s: float = Field(
        5.0, ge=0.1, le=600, description="idle keep-alive timeout (0.1 to 600 s)"
    )

    # is the model still working: volatility regime, live scoring, drift, signal journal
    vol_regime_threshold: float = Field(
        0.5, gt=0, lt=1, description="regime 'high' when P(high volatility) is at least this"
    )
    score_window: int = Field(
        288, ge=1, le=100_000, description="live scores over the last N scored candles"
    )
    drift_window: int = Field(
        288, ge=10, le=100_000, description="PSI over the last N live feature vectors per symbol"
    )
    journal_retention_days: float = Field(
        30.0, gt=0, le=3650, description="signal journal keeps N days of candles (candle time)"
    )

    # champion and challenger (DESIGN section 12): the registry, shadow scoring, promotion
    model_dir: Path | None = Field(
        None, description="the model registry folder (unset: the folder of APPRENTICE_MODEL)"
    )
    promote_min_scored: int = Field(
        288, ge=1, le=1_000_000, description="paired scored candles a promotion needs at least"
    )
    promote_margin: float = Field(
        0.0, ge=0, le=1, description="refuse a challenger worse by more (volatility log loss)"
    )
    auto_promote: bool = Field(False, description="apply the promotion rule by itself")

    @field_validator("model_dir")
    @classmethod
    def _check_model_dir(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if any(len(part.encode()) > 255 or not part.isprintable() for part in value.parts):
            raise ValueError("give a folder path: printable names of at most 255 bytes each")
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file; give the folder that holds the model versions")
        return value

    @property
    def registry_dir(self) -> Path:
        """Where model versions live: APPRENTICE_MODEL_DIR, else APPRENTICE_MODEL's folder."""
        return self.model_dir if self.model_dir is not None else self.model.parent

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one symbol, e.g. APPRENTICE_SYMBOLS=BTCUSDT,ETHUSDT")
        bad = [s for s in value if not _SYMBOL.match(s)]
        if bad:
            raise ValueError(f"symbols must be upper-case Bybit names like BTCUSDT; got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"symbols repeat: {short(value, 200)}")
        if len(value) > MAX_SYMBOLS:
            raise ValueError(
                f"{len(value)} symbols; at most {MAX_SYMBOLS} per process (shard more over "
                "several services)"
            )
        return value

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, value: str) -> str:
        if value not in VALID_INTERVALS:
            raise ValueError(f"use one of {', '.join(VALID_INTERVALS)} (Bybit's spelling)")
        return value

    @field_validator("ws_url")
    @classmethod
    def _check_ws(cls, value: str) -> str:
        return _url(value, ("ws", "wss"))

    @field_validator("rest_url")
    @classmethod
    def _check_rest(cls, value: str) -> str:
        return _url(value, ("http", "https")).rstrip("/")

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        # compose passes APPRENTICE_ADMIN_TOKEN= through empty when the shell has none
        return None if value == "" else value

    @field_validator("admin_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if len(text) < MIN_TOKEN or any(c.isspace() or not c.isprintable() for c in text):
            raise ValueError(
                f"the admin token needs at least {MIN_TOKEN} printable characters and no "
                "spaces (e.g. from: python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        return value

    @field_validator("model", "state_dir")
    @classmethod
    def _check_path(cls, value: Path) -> Path:
        text = str(value)
        if not text or len(text) > MAX_PATH or any(len(p) > 255 for p in value.parts):
            raise ValueError(f"give a path of at most {MAX_PATH} characters, each part at most 255")
        if "\x00" in text:
            raise ValueError("a path cannot contain a NUL character")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        # a name or an address, nothing else (whether it can be listened on is checked by
        # `python -m service` before start-up, naming this variable)
        if not _HOST.match(value):
            raise ValueError("give an IP address or a host name, e.g. 127.0.0.1 or 0.0.0.0")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: Path) -> Path:
        try:
            is_dir = value.is_dir()
        except OSError:  # e.g. a name too long for the file system: the load says not found
            is_dir = False
        if is_dir:
            raise ValueError(
                f"{value} is a directory; give the .onnx file, e.g. {value / DEFAULT_MODEL.name}"
            )
        return value

    @model_validator(mode="after")
    def _check_thresholds(self) -> Settings:
        if self.short_threshold > self.long_threshold:
            raise ValueError("APPRENTICE_SHORT_THRESHOLD must not exceed APPRENTICE_LONG_THRESHOLD")
        if self.backfill_bars < self.signal_horizon_bars:
            raise ValueError(
                "APPRENTICE_BACKFILL_BARS must be at least APPRENTICE_SIGNAL_HORIZON_BARS: "
                "signals come only from bars with the horizon behind them, and the candles "
                "missed while the service was down get them only from the warm-up bars past it"
            )
        return self

    @property
    def model_card_path(self) -> Path:
        """The model card beside the ONNX file."""
        return self.model.with_suffix(".json")


def _url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` if it is a URL the client can open: one of ``schemes``, a host of a sane
    length, a port in 1-65535 (a bad one used to fail on every reconnect, not at start)."""
    if len(value) > MAX_URL:
        raise ValueError(f"a URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError as e:
        raise ValueError(f"not a URL ({e})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
    host = parts.hostname
    if not host or len(host) > 253 or not _HOST.match(host):
        raise ValueError("give a host name or an IP address after the scheme")
    if port == 0:
        raise ValueError("the port must be in 1-65535")
    return value


SECRET_FIELDS = frozenset({"admin_token"})  # never echoed, whatever goes wrong
_MIN_REDACTED = 6  # shorter "secrets" would garble the message more than they would leak


def _secrets(overrides: dict[str, object]) -> list[str]:
    """The secret values given (overrides or environment), to scrub from any message."""
    found: list[str] = []
    for name in SECRET_FIELDS:
        var = f"APPRENTICE_{name}".upper()
        values = [overrides.get(name)] + [v for k, v in os.environ.items() if k.upper() == var]
        for v in values:
            text = v.get_secret_value() if isinstance(v, SecretStr) else v
            if isinstance(text, str) and len(text) >= _MIN_REDACTED:
                found.append(text)
    return found


def scrub(message: str, overrides: dict[str, object] | None = None) -> str:
    """``message`` with every admin token given (environment or ``overrides``) as ``***``:
    for anything printed before or around start-up (a token pasted into APPRENTICE_MODEL
    comes back in "model ... not found")."""
    for secret in _secrets(overrides or {}):
        message = message.replace(secret, "***")
    return message


def redact_logs(settings: Settings) -> None:
    """Every log record from now on, whoever logs it (uvicorn included), has the admin token
    replaced by ``***``: a path or a host in a log line may carry a token pasted there."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not token:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a malformed call: leave it to logging to report
            return record
        if token in text:
            record.msg, record.args = text.replace(token, "***"), None
        return record

    logging.setLogRecordFactory(factory)


def _describe(err: Any) -> str:
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else ""
    var = f"APPRENTICE_{field.upper()}" if field else "APPRENTICE_*"
    # the value is echoed only for a plain field that is not a secret: a model-level error's
    # input is every setting at once (the admin token included)
    if field and field not in SECRET_FIELDS and "input" in err:
        return f"  {var}={short(err['input'])}: {err['msg']}"
    return f"  {var}: {err['msg']}"


def load_settings(**overrides: object) -> Settings:
    """Parse the environment once; turn validation errors into a message that says what to
    fix and never contains a secret value (the admin token)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = ["refusing to start: bad configuration"]
        lines += [_describe(err) for err in exc.errors(include_url=False, include_context=False)]
        message = "\n".join(lines)
    except PydanticSettingsError as exc:  # e.g. a value the environment source cannot decode
        message = f"refusing to start: bad configuration: {short(str(exc), 300)}"
    # belt and braces: a token pasted into another variable
    raise SettingsError(scrub(message, overrides)) from None
