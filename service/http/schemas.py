"""Response and request models of the HTTP API (DESIGN section 6), for OpenAPI and clients.

Built only off the hot path (when a request is answered), from the pipeline's plain records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.paper.account import MAX_USDT, MIN_USDT
from service.pipeline.signals import Signal, regime_of


class ErrorOut(BaseModel):
    """Every error answer: ``{"detail": ...}``."""

    detail: str | list[object]


class ModelRef(BaseModel):
    """The model that produced a signal."""

    name: str
    version: str


class LatencyUs(BaseModel):
    """Per-stage latency of this signal, microseconds."""

    features: float
    inference: float


class VolatilityOut(BaseModel):
    """The volatility head: P(next candle's range above its 48-bar median) and the regime."""

    probability_high: float = Field(ge=0, le=1)
    regime: Literal["high", "normal"] = Field(
        description="high when probability_high >= APPRENTICE_VOL_REGIME_THRESHOLD"
    )


class SignalOut(BaseModel):
    """The latest signal of one symbol."""

    symbol: str
    interval: str
    direction: Literal["up", "down"]
    probability_up: float = Field(ge=0, le=1)
    confidence: float = Field(ge=0, le=1, description="|2p - 1|")
    action: Literal["long", "short", "flat"]
    volatility: VolatilityOut
    candle_start: int = Field(description="candle open time, ms since epoch UTC (exchange clock)")
    generated_at: str = Field(description="ISO-8601 UTC wall time the signal was made")
    age_seconds: float = Field(description="seconds since its candle was received (local clock)")
    stale: bool = Field(description="no newer closed candle for stale_after_intervals intervals")
    model: ModelRef
    latency_us: LatencyUs

    @classmethod
    def of(
        cls, s: Signal, age_seconds: float, stale: bool, regime_threshold: float = 0.5
    ) -> SignalOut:
        """From the pipeline's record plus the ages computed at request time."""
        return cls(
            symbol=s.symbol,
            interval=s.interval,
            direction=s.direction,  # type: ignore[arg-type]
            probability_up=s.probability_up,
            confidence=s.confidence,
            action=s.action,  # type: ignore[arg-type]
            volatility=VolatilityOut(
                probability_high=s.probability_high_vol,
                regime=regime_of(s.probability_high_vol, regime_threshold),  # type: ignore[arg-type]
            ),
            candle_start=s.candle_start,
            generated_at=iso(s.generated_at),
            age_seconds=round(age_seconds, 6),
            stale=stale,
            model=ModelRef(name=s.model_name, version=s.model_version),
            latency_us=LatencyUs(
                features=round(s.features_us, 3), inference=round(s.inference_us, 3)
            ),
        )


class WarmingOut(BaseModel):
    """A symbol without a signal yet."""

    symbol: str
    bars: int = Field(description="closed candles seen")
    needed: int = Field(description="closed candles needed for the first signal")


class SignalsOut(BaseModel):
    """Every configured symbol: its latest signal, or its warm-up progress."""

    interval: str
    signals: list[SignalOut]
    warming: list[WarmingOut]
    history: dict[str, list[tuple[int, float]]] | None = Field(
        None, description="with ?history=N: recent (candle_start, probability_up) per symbol"
    )


class HealthOut(BaseModel):
    """Liveness."""

    status: Literal["ok", "failing"]
    uptime_seconds: float
    problems: list[str]


class SymbolReadiness(BaseModel):
    """Per-symbol readiness detail."""

    bars: int
    needed: int
    warm: bool
    stale: bool | None
    age_seconds: float | None


class ReadyOut(BaseModel):
    """Readiness with the reasons it is not ready."""

    ready: bool
    reasons: list[str]
    model_loaded: bool
    feed_connected: bool
    symbols: dict[str, SymbolReadiness]


class PositionOut(BaseModel):
    """One symbol's paper position and its PnL so far."""

    symbol: str
    qty: float = Field(description="signed, base units")
    side: Literal["long", "short", "flat"]
    target: float = Field(0.0, description="the policy's target, a fraction of the notional")
    avg_entry: float
    mark: float | None
    unrealized_pnl: float
    realized_pnl: float = Field(0.0, description="before fees")
    fees: float = 0.0
    net_pnl: float = Field(0.0, description="realised + unrealised - fees")
    fills: int = 0


class RoundTripOut(BaseModel):
    """A position from flat (or a flip) back to flat (or the next flip)."""

    symbol: str
    side: Literal["long", "short"]
    entry_ms: int
    entry_price: float
    exit_ms: int
    exit_price: float
    realized: float = Field(description="PnL before fees")
    fees: float
    net_pnl: float = Field(description="after fees")
    return_: float = Field(alias="return", description="net PnL / entry notional")


class PaperOut(BaseModel):
    """The paper account (USDT)."""

    model_config = ConfigDict(populate_by_name=True)

    enabled: bool
    currency: Literal["USDT"] = "USDT"
    account: int = Field(description="account number; a reset opens the next one")
    policy: str = Field(description="the trading policy in force (DESIGN section 8)")
    policy_note: str = Field("", description="why this policy, in one sentence")
    initial_usdt: float
    notional_usdt: float
    fee_bps: float
    slippage_bps: float
    equity: float
    realized_pnl: float = Field(description="gross of fees")
    unrealized_pnl: float
    fees: float
    net_pnl: float = Field(description="equity - initial_usdt, after fees")
    drawdown: float = Field(description="fraction below peak equity")
    trades: int = Field(description="fills (an order each), not round trips")
    fills: int = Field(description="orders filled")
    round_trips: int = Field(description="closed round trips")
    exposure_usdt: float = Field(description="gross notional held now")
    buy_and_hold_equity: float = Field(
        description="initial + notional of every symbol bought at its first live close and "
        "held (before fees)"
    )
    positions: list[PositionOut]
    round_trip_list: list[RoundTripOut] = Field(description="the newest round trips first")
    equity_curve: list[tuple[int, float]] = Field(
        description="(candle start ms, equity) after each live candle, oldest first"
    )
    buy_and_hold_curve: list[tuple[int, float]] = Field(
        description="(candle start ms, buy-and-hold equity) on the same candles"
    )


class TradeOut(BaseModel):
    """One journaled fill."""

    symbol: str
    candle_start: int
    side: Literal["buy", "sell"]
    qty: float
    price: float = Field(description="fill price after slippage")
    close: float
    fee: float
    realized_pnl: float
    position_after: float
    avg_entry_after: float
    probability_up: float
    action: str
    ts_ms: int = Field(description="wall time of the fill, ms")


class TradesOut(BaseModel):
    """The trade journal of the current account, newest first."""

    account: int
    total: int
    trades: list[TradeOut]


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,122}\.onnx$"


class ReloadIn(BaseModel):
    """Optional: a model file in the configured model's directory (default: the same file)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a default

    model: str | None = Field(
        None,
        max_length=128,
        pattern=MODEL_NAME_PATTERN,
        description="a plain .onnx file name in the configured model's directory",
        examples=["student_pooled_5m.onnx"],
    )


class ReloadOut(BaseModel):
    """The model now serving."""

    reloaded: bool
    model: ModelRef
    path: str
    sha256: str


class ResetIn(BaseModel):
    """Optional new terms for the fresh account (default: the configured ones)."""

    model_config = ConfigDict(extra="forbid")

    # strict: JSON true is not 1 USDT (a number is; an integer is a number)
    initial_usdt: float | None = Field(
        None, ge=MIN_USDT, le=MAX_USDT, allow_inf_nan=False, strict=True
    )
    notional_usdt: float | None = Field(
        None, ge=MIN_USDT, le=MAX_USDT, allow_inf_nan=False, strict=True
    )


def iso(epoch_s: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z."""
    return (
        datetime.fromtimestamp(epoch_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
