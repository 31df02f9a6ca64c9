"""``GET /model/health`` (is the model still working) and ``GET /chart`` (the price chart).

Both read :class:`service.monitor.model_monitor.ModelMonitor`: the live scores of the served
signals per symbol and head over the last N scored candles next to the card's test figures and the
no-skill reference, PSI per feature against the card's training reference, and per symbol
the recent closes with the served action and the volatility probability.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from service.http.honesty import drift_note, live_period, policy_note
from service.http.model_routes import challenger_block
from service.http.schemas import ErrorOut, ModelRef
from service.runtime import Runtime

router = APIRouter()


class Figures(BaseModel):
    """Scores over one window (n scored candles)."""

    n: int
    accuracy: float
    log_loss: float = Field(description="nats")
    brier: float
    auc: float
    base_rate: float = Field(description="share of label 1 in the window")


class HeadHealth(BaseModel):
    """One head of one symbol: live figures, the no-skill reference and the card's."""

    n: int = Field(description="scored candles in the window now (at most window)")
    window: int = Field(description="N: the window length (APPRENTICE_SCORE_WINDOW)")
    scored_total: int = Field(description="signals scored since the journal began")
    live: Figures | None
    no_skill: Figures | None = Field(
        description="the constant prediction = base rate of the same window"
    )
    test: dict[str, float] | None = Field(description="the model card's test-split figures")
    beats_no_skill: bool | None = Field(description="live log loss below the no-skill one")


class DriftOut(BaseModel):
    """PSI per feature of the pooled live feature vectors against the card's reference."""

    n: int = Field(description="live feature vectors in the window (all symbols)")
    window_per_symbol: int
    alert_above: float
    reference_rows: int | None
    features: dict[str, float | None]
    note: str | None
    explanation: str = Field(description="which features moved, against what, what to do")


class JournalOut(BaseModel):
    """Where the journal lives and what it holds."""

    path: str
    klines: int
    signals: int


class PeriodOut(BaseModel):
    """The live candles so far against the model card's training and validation spans."""

    first_ms: int | None
    last_ms: int | None
    in_sample: bool | None = Field(description="overlaps the training or validation span")
    overlaps: list[str]
    statement: str


class PolicyOut(BaseModel):
    """The paper account's policy and why it is the one in force."""

    name: str | None
    source: str | None
    card_default: str | None
    beats_flat_on_validation: bool | None
    statement: str


class ModelHealthOut(BaseModel):
    """Is the model still working on the market it trades now."""

    model: ModelRef
    window: int = Field(description="the most scored candles a row can hold")
    n: int = Field(description="the most scored candles any row holds now (the N shown)")
    period: PeriodOut
    policy: PolicyOut
    symbols: dict[str, dict[str, HeadHealth]]
    drift: DriftOut
    journal: JournalOut
    challenger: dict[str, Any] | None = Field(
        None, description="champion and challenger side by side (service.http.model_routes)"
    )


class ChartPointOut(BaseModel):
    """One candle of the price chart: its close, the served action, P(high volatility)."""

    candle_start: int = Field(description="candle open time, ms since epoch UTC")
    close: float
    action: Literal["long", "short", "flat"]
    probability_high_vol: float


class ChartOut(BaseModel):
    """Per symbol its recent candles, oldest first."""

    interval: str
    regime_threshold: float
    points: dict[str, list[ChartPointOut]]


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@router.get(
    "/model/health",
    response_model=ModelHealthOut,
    responses={503: {"model": ErrorOut}},
    summary="Live scores and feature drift of the model now serving",
)
async def get_model_health(request: Request) -> Any:
    """Per symbol and head the rolling live scores (N stated); PSI per feature."""
    rt = _runtime(request)
    predictor = rt.slot.current
    if predictor is None:
        raise HTTPException(503, "no model loaded yet", headers={"Retry-After": "5"})
    mon = rt.monitor
    card = predictor.card
    counts = await mon.call(mon.journal.counts)
    scores = mon.scores(card)
    drift = mon.drift(card)
    return ModelHealthOut(
        model=ModelRef(name=card.name, version=card.version),
        window=rt.settings.score_window,
        n=max((h["n"] for heads in scores.values() for h in heads.values()), default=0),
        period=PeriodOut(**live_period(rt, card)),
        policy=PolicyOut(**policy_note(rt, card)),
        symbols=scores,
        drift=DriftOut(**drift, explanation=drift_note(drift, card)),
        journal=JournalOut(path=str(mon.journal.path), **counts),
        challenger=await challenger_block(rt),
    )


@router.get("/chart", response_model=ChartOut, summary="Recent closes, actions, volatility")
async def get_chart(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=300, description="points per symbol")] = 120,
) -> ChartOut:
    """The dashboard's price chart data, per configured symbol."""
    rt = _runtime(request)
    return ChartOut(
        interval=rt.settings.interval,
        regime_threshold=rt.settings.vol_regime_threshold,
        points={
            s: [ChartPointOut(**p._asdict()) for p in rt.monitor.chart_points(s, limit)]
            for s in rt.settings.symbols
        },
    )
