"""Every Prometheus metric of the service (DESIGN section 7), over an injected registry.

One :class:`Metrics` object per app; tests build their own registry so nothing is global.
Base units (seconds, USDT), ``_total`` counters, bounded labels (symbols come from the
configuration, reasons and sides from fixed sets).

Label cardinality has a ceiling (DESIGN section 13). A service watching the whole market
(500+ symbols) would otherwise export some twenty series per symbol — ~10k series, and a
scrape that serialises them costs the service tens of ms of CPU on every scrape, every
Prometheus replica, while its per-symbol series are the least read. So per-symbol series
exist for the first :data:`SYMBOL_SERIES_MAX` symbols labelled (configuration order: the
pipeline labels every configured symbol when it is built); past the ceiling a symbol's
counters add to one aggregate series, ``symbol="_other"``, and its latest-value gauges
(probabilities, live scores) are not exported — ``GET /signals`` and ``GET /model/health``
serve every symbol. Every other label comes from a fixed set. The ceiling bounds the series
count at about 20 × :data:`SYMBOL_SERIES_MAX` + a few hundred, whatever the symbol list.

The ``_created`` sample of every counter and histogram (client_python's default, a creation
timestamp Prometheus stores as one more series) is not exported: nothing here reads it, and
it was a third of a scrape's samples and of its cost (measured by ``bench/scale.py``'s
``scrape_micro``: 94 → 58 ms at N = 500 without the ceiling). The switch is
client_python's, process-wide; the service's registry is the process's only one.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

SYMBOL_SERIES_MAX = 64  # symbols with their own series (the module docstring)
OTHER_SYMBOL = "_other"  # the aggregate label of the symbols past the ceiling

# Latency buckets from 5 µs to 30 s: inference runs in tens of µs, the HTTP path in ms, and
# a market-wide burst that saturates the service is seconds late (the buckets past 1 s show it).
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
    2.5,
    5.0,
    10.0,
    30.0,
)
# Rows per batched ONNX call: 1 (one symbol) up to the whole market.
BATCH_ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

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
    "frame_overflow",  # a connection's frame queue was full: the frame dropped, REST repairs
    "subscribe_rejected",
)
# Why a batch with live candles was scored (apprentice_bursts_total{scored}): every expected
# confirm in, the collection window ran out, the next candle's burst began, the buffer was
# full, or a caller asked (tools and tests).
BURST_ENDS = ("complete", "window", "next", "full", "now")
PAPER_ERROR_REASONS = ("journal", "invalid_amount", "queue_full")
PROMOTION_OUTCOMES = ("promoted", "refused", "rolled_back")
NOTICE_KINDS = ("notice", "error_reply")


class Metrics:
    """The service's metrics, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        symbol_series_max: int = SYMBOL_SERIES_MAX,
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``_created`` series
        self.registry = registry if registry is not None else CollectorRegistry()
        self.symbol_series_max = symbol_series_max
        self._own_series: set[str] = set()
        r = self.registry
        ns = "apprentice"
        # latency
        self.inference_seconds = Histogram(
            "inference_seconds",
            "ONNX student inference: one batched call (the candles scored together; "
            "apprentice_batch_rows counts its rows)",
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
            "Live closed candle: starts when the feed's event loop read the websocket "
            "frame's last bytes off the socket, ends when its signal is stored with its "
            "burst's (includes any wait for the feed's loop, the parse and the wait for the "
            "burst's other confirms; not the kernel's queueing before that read, nor serving "
            "it over HTTP); buckets 5 us to 30 s",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # scale (DESIGN section 13): the burst of candles that close together
        self.burst_complete_seconds = Histogram(
            "burst_complete_seconds",
            "A burst of closed candles scored together: starts when the feed read the "
            "burst's last live confirm off the socket, ends when the burst's last signal is "
            "stored; buckets 5 us to 30 s",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.burst_spread_seconds = Histogram(
            "burst_spread_seconds",
            "A burst of closed candles scored together: from its first to its last live "
            "confirm read off the socket (what the collection window must cover); buckets "
            "5 us to 30 s",
            namespace=ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bursts = Counter(
            "bursts",
            "Batches with live candles scored, by why they were scored then (complete: every "
            "expected confirm in; window: the collection window ran out; next: the next "
            "candle's burst began; full: the batch buffer filled; now: asked)",
            ["scored"],
            namespace=ns,
            registry=r,
        )
        self.batch_rows = Histogram(
            "batch_rows",
            "Windows scored in one batched ONNX call",
            namespace=ns,
            buckets=BATCH_ROWS_BUCKETS,
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
        # feed reliability (issue 27): a symbol out of service, REST failures, log floods
        self.symbol_problem = Gauge(
            "symbol_problem",
            "1 while the feed cannot keep this symbol current (REST warm-up or fills failing, "
            "refused by the exchange); /ready names the reason",
            ["symbol"],
            namespace=ns,
            registry=r,
        )
        self.rest_failures = Counter(
            "rest_failures",
            "Failed REST kline requests of the feed, by outcome (error, forbidden, refused)",
            ["symbol", "outcome"],
            namespace=ns,
            registry=r,
        )
        self.log_suppressed = Counter(
            "log_suppressed",
            "Log lines not written because their kind exceeded its rate (counted here instead)",
            ["kind"],
            namespace=ns,
            registry=r,
        )
        for end in BURST_ENDS:
            self.bursts.labels(end)

    def symbol_label(self, symbol: str) -> str:
        """``symbol`` while it is within the per-symbol ceiling (the first
        ``symbol_series_max`` symbols asked), else :data:`OTHER_SYMBOL`."""
        own = self._own_series
        if symbol in own:
            return symbol
        if len(own) < self.symbol_series_max and symbol != OTHER_SYMBOL:
            own.add(symbol)
            return symbol
        return OTHER_SYMBOL
