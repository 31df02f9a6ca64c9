"""Every Prometheus metric of the service (DESIGN section 7), over an injected registry.

One :class:`Metrics` object per app; tests build their own registry so nothing is global.
Base units (seconds, USDT), ``_total`` counters, bounded labels (symbols come from the
configuration, reasons and sides from fixed sets).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 5 µs to 1 s: inference runs in tens of µs, the HTTP path in ms.
LATENCY_BUCKETS = (
    5e-6,
    1e-5,
    2e-5,
    3e-5,
    4e-5,
    5e-5,
    7.5e-5,
    1e-4,
    1.25e-4,
    1.5e-4,
    2e-4,
    3e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
)

REJECT_REASONS = (
    "malformed_json",
    "bad_shape",
    "bad_value",
    "bad_price",  # a price not finite and positive
    "bad_ohlc",  # high < low, or open/close outside [low, high]
    "off_grid",  # start not on the interval grid
    "future",  # start or ts more than a few intervals ahead of the symbol's clock
    "early_confirm",  # confirm=true stamped before its candle's window ended
    "inconsistent_confirm",  # a confirm that contradicts the candle's own updates
    "implausible_price",  # a confirm far from the candle's own updates (REST fetches it)
    "unknown_topic",
    "out_of_order",
    "duplicate",
    "queue_overflow",
    "subscribe_rejected",
)
PAPER_ERROR_REASONS = ("journal", "invalid_amount", "queue_full")
PROMOTION_OUTCOMES = ("promoted", "refused", "rolled_back")
NOTICE_KINDS = ("notice", "error_reply")


class Metrics:
    """The service's metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ns = "apprentice"
        # latency
        self.inference_seconds = Histogram(
            "inference_seconds",
            "ONNX student inference, one row",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feature_update_seconds = Histogram(
            "feature_update_seconds",
            "Incremental feature update per closed kline",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.signal_latency_seconds = Histogram(
            "signal_latency_seconds",
            "Live closed candle: from the moment the feed's event loop read the websocket "
            "frame's last bytes off the socket to its signal stored (includes any wait for "
            "the feed's loop and the parse; not the kernel's queueing before that read, "
            "nor serving it over HTTP)",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_request_duration_seconds = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration",
            ["route", "method", "status"],
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # market data
        self.klines = Counter(
            "klines", "Kline updates received", ["symbol", "confirmed"], namespace=ns, registry=r
        )
        self.klines_rejected = Counter(
            "klines_rejected", "Frames or klines rejected", ["reason"], namespace=ns, registry=r
        )
        self.ws_connected = Gauge(
            "ws_connected", "1 while the exchange websocket is connected", namespace=ns, registry=r
        )
        self.ws_reconnects = Counter(
            "ws_reconnects", "Websocket reconnects", namespace=ns, registry=r
        )
        self.backfilled_klines = Counter(
            "backfilled_klines",
            "Closed klines fetched by REST",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self.last_kline_age_seconds = Gauge(
            "last_kline_age_seconds",
            "Seconds since the last kline was received (local clock)",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Closed klines waiting for the pipeline", namespace=ns, registry=r
        )
        # signals and model
        self.signals = Counter(
            "signals", "Signals produced", ["symbol", "direction"], namespace=ns, registry=r
        )
        self.signal_probability_up = Gauge(
            "signal_probability_up",
            "Latest probability of an up candle",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self.signal_direction = Gauge(
            "signal_direction",
            "Latest direction: 1 up, -1 down",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self.model_info = Gauge(
            "model_info", "Loaded model (value 1)", ["name", "version"], namespace=ns, registry=r
        )
        self.model_reloads = Counter(
            "model_reloads", "Model reload attempts", ["result"], namespace=ns, registry=r
        )
        self.ready = Gauge("ready", "1 when /ready answers 200", namespace=ns, registry=r)
        self.signal_probability_high_vol = Gauge(
            "signal_probability_high_vol",
            "Latest probability of a high-volatility next candle",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        # is the model still working (DESIGN section 7): live scores and drift
        self.live_log_loss = Gauge(
            "live_log_loss",
            "Log loss over the last N scored candles (nats); role champion: the served "
            "probabilities, challenger: the shadow model's on the same candles",
            ["symbol", "head", "role"],
            namespace=ns,
            registry=r,
        )
        self.live_accuracy = Gauge(
            "live_accuracy",
            "Accuracy of the served signals over the last N scored candles",
            ["symbol", "head"],
            namespace=ns,
            registry=r,
        )
        self.live_scored = Counter(
            "live_scored",
            "Signals scored against the candle that followed",
            ["symbol", "head"],
            namespace=ns,
            registry=r,
        )
        self.feature_psi = Gauge(
            "feature_psi",
            "PSI of the last live feature values against the model card's training reference",
            ["feature"],
            namespace=ns,
            registry=r,
        )
        self.journal_write_seconds = Histogram(
            "journal_write_seconds",
            "One committed batch of the signal journal (its own thread)",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.journal_errors = Counter(
            "journal_errors", "Signal journal writes that failed", namespace=ns, registry=r
        )
        # paper trading
        self.paper_equity_usdt = Gauge(
            "paper_equity_usdt", "Paper account equity", namespace=ns, registry=r
        )
        self.paper_realized_pnl_usdt = Gauge(
            "paper_realized_pnl_usdt", "Paper realised PnL", namespace=ns, registry=r
        )
        self.paper_unrealized_pnl_usdt = Gauge(
            "paper_unrealized_pnl_usdt", "Paper unrealised PnL", namespace=ns, registry=r
        )
        self.paper_fees_usdt = Gauge("paper_fees_usdt", "Paper fees paid", namespace=ns, registry=r)
        self.paper_drawdown_ratio = Gauge(
            "paper_drawdown_ratio",
            "Paper drawdown from peak equity (0..1)",
            namespace=ns,
            registry=r,
        )
        self.paper_position = Gauge(
            "paper_position",
            "Paper position in base units (signed)",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self.paper_trades = Counter(
            "paper_trades", "Paper fills", ["symbol", "side"], namespace=ns, registry=r
        )
        self.paper_errors = Counter(
            "paper_errors",
            "Paper signals not booked, by reason (journal, invalid_amount, queue_full)",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.exchange_notices = Counter(
            "exchange_notices",
            "Exchange frames that are neither data nor an expected reply (logged truncated)",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        # champion and challenger (DESIGN section 12): shadow scoring and promotions
        self.promotions = Counter(
            "promotions",
            "Promotion requests and rollbacks, by outcome (promoted, refused, rolled_back)",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        self.promotion_refusals_in_row = Gauge(
            "promotion_refusals_in_row",
            "Promotions refused since the last promotion (alerts fire on a long streak)",
            namespace=ns,
            registry=r,
        )
        self.challenger_info = Gauge(
            "challenger_info",
            "Challenger scored in shadow (value 1; absent without one)",
            ["name", "version"],
            namespace=ns,
            registry=r,
        )
        self.shadow_inference_seconds = Histogram(
            "shadow_inference_seconds",
            "The challenger's inference on one burst of closed candles (candle thread)",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for outcome in PROMOTION_OUTCOMES:
            self.promotions.labels(outcome)
        for reason in PAPER_ERROR_REASONS:  # exported as 0 from the start: alerts see them
            self.paper_errors.labels(reason)
        for kind in NOTICE_KINDS:
            self.exchange_notices.labels(kind)
