"""Shadow scoring: the challenger scores the champion's windows, is journaled and scored live,
and is never served or traded.

Two hooks feed :class:`ShadowScorer`, both on the candle thread and both O(1) appends:
:meth:`ShadowScorer.score` is the pipeline's ``shadow`` callback — a (B, F, T) batch of the
windows the champion just scored, with their symbols and candle starts — and runs the
challenger on the whole batch in one ``run`` (nothing it returns reaches the signal store or
the paper trader); :meth:`ShadowScorer.tee` wraps the monitor's observer so the scorer sees
every closed kline with the champion's signal. Like the monitor, the work is drained on the
API's loop once per burst.

Live scores use the champion's own code (:class:`service.monitor.live_score.LiveScorer`):
one scorer for the challenger and one for the champion over the same candles, both keyed by
the pair (a new champion or challenger starts both windows afresh), so the two columns of
``/model/health`` are the same scored candles, and the paired difference of log loss
(:func:`service.monitor.promotion.paired_difference`) is row by row.

The challenger's outputs go to ``shadow_signals`` in the signal journal (a sibling table of
``signals`` with a ``role`` column: an additive migration, ``CREATE TABLE IF NOT EXISTS``), on
the journal's own thread; a restart replays klines, the champion's signals and these rows
through the same calls, so both live scores come back (:meth:`ShadowScorer.rebuild`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from service.market.klines import interval_ms
from service.metrics import Metrics
from service.model.card import HEADS
from service.model.predictor import Predictor
from service.monitor.live_score import LiveScorer
from service.monitor.promotion import PairedDiff, paired_difference
from service.monitor.role_journal import ShadowRow, ensure_schema, read_rows, write_rows
from service.monitor.signal_journal import SignalJournal
from service.pipeline.scoring import Observed

log = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
ROLES = ("champion", "challenger")
PRUNE_EVERY = 64  # shadow batches between retention passes


class _Out(NamedTuple):  # a challenger output waiting for its kline on the monitor's loop
    p_up: float
    p_vol: float
    name: str
    version: str
    sha256: str


class _Champ(NamedTuple):
    p_up: float
    p_vol: float
    live: bool
    sha256: str


def _rounded(s: Any) -> dict[str, Any] | None:
    return (
        None if s is None else {k: round(v, 6) if isinstance(v, float) else v for k, v in s.items()}
    )


# ---------------------------------------------------------------------- the scorer
class ShadowScorer:
    """The challenger's predictor, its live scores next to the champion's, its journal rows."""

    def __init__(
        self,
        *,
        symbols: Iterable[str],
        interval: str,
        metrics: Metrics,
        journal: SignalJournal,
        call: Callable[..., Awaitable[Any]],
        score_window: int = 288,
    ) -> None:
        self.symbols = list(symbols)
        self.interval = interval
        self.metrics = metrics
        self.journal = journal
        self.call = call  # runs a blocking function on the journal's thread
        self.score_window = score_window
        self.challenger: Predictor | None = None  # read by the candle thread: one reference
        step = interval_ms(interval)
        self.scorers = {r: LiveScorer(self.symbols, step, score_window) for r in ROLES}
        self.pairs: dict[str, dict[str, deque[tuple[float, float, float]]]] = {
            s: {h: deque(maxlen=score_window) for h in HEADS} for s in self.symbols
        }
        self.paired_total = dict.fromkeys(self.symbols, 0)
        self._key = dict.fromkeys(self.symbols, "")
        self._outs: dict[tuple[str, int], _Out] = {}
        self._last: dict[str, tuple[int, _Champ | None]] = {}  # newest kline taken, per symbol
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rows: list[ShadowRow] = []
        self._writes: set[asyncio.Future[Any]] = set()
        self._batches = 0
        self.on_scored: Callable[[], None] | None = None  # after a drain that paired candles
        self.errors = 0
        self._m_infer = metrics.shadow_inference_seconds

    # ------------------------------------------------------------------ the candle thread
    def score(
        self, windows: F64 | npt.NDArray[np.float32], symbols: Sequence[str], starts: Sequence[int]
    ) -> None:
        """The pipeline's shadow hook: the challenger scores a (B, F, T) batch of windows."""
        pred = self.challenger
        if pred is None:
            return
        t0 = time.perf_counter()
        if len(windows) == 1:  # one row: the predictor's bound buffers, as the champion's
            ups: Sequence[float] = (pred.predict(windows[0]),)
            vols: Sequence[float] = (pred.high_vol,)
        else:  # a burst: one run over the (B, F, T) batch
            heads = pred.predict_heads(np.asarray(windows, dtype=np.float32))
            ups, vols = heads["direction"].tolist(), heads["volatility"].tolist()
        self._m_infer.observe(time.perf_counter() - t0)
        card = pred.card
        for sym, start, p, v in zip(symbols, starts, ups, vols, strict=True):
            self._offer(
                ("out", sym, start, _Out(float(p), float(v), card.name, card.version, card.sha256))
            )

    def tee(self, observer: Callable[[list[Observed]], None]) -> Callable[[list[Observed]], None]:
        """``observer`` (the monitor's, one call per scored batch), and this scorer after it."""

        def both(batch: list[Observed]) -> None:
            observer(batch)
            for event, _vec, signal in batch:
                self._offer(("kline", event, signal))

        return both

    def _offer(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._drain()
            else:
                self._loop.call_soon_threadsafe(self._drain)

    # ------------------------------------------------------------------ the monitor's loop
    def _drain(self) -> None:
        self._scheduled = False
        paired = False
        while self._inbox:
            item = self._inbox.popleft()
            try:
                if item[0] == "out":
                    self._take_out(item[1], item[2], item[3])
                    continue
                event, signal = item[1], item[2]
                k = event.kline
                champ = (
                    None
                    if signal is None
                    else _Champ(
                        signal.probability_up,
                        signal.probability_high_vol,
                        signal.live,
                        signal.model_sha256,
                    )
                )
                paired |= self._take(k.symbol, k.start, k.open, k.high, k.low, k.close, champ)
            except Exception:
                self.errors += 1
                log.exception("shadow: could not score %r", item[:3])
        if self._rows:
            rows, self._rows = self._rows, []
            self._spawn_write(rows)
        if paired and self.on_scored is not None:
            self.on_scored()

    def _take(
        self,
        sym: str,
        start: int,
        o: float,
        h: float,
        low: float,
        c: float,
        champ: _Champ | None,
        *,
        journal: bool = True,
    ) -> bool:
        if sym not in self.paired_total:
            return False
        a = self.scorers["champion"].on_kline(sym, start, o, h, low, c)
        b = self.scorers["challenger"].on_kline(sym, start, o, h, low, c)
        paired = a is not None and b is not None and a.candle_start == b.candle_start
        if paired and a is not None and b is not None:
            pairs = self.pairs[sym]
            pairs["direction"].append((a.direction, a.probability_up, b.probability_up))
            pairs["volatility"].append(
                (a.volatility, a.probability_high_vol, b.probability_high_vol)
            )
            self.paired_total[sym] += 1
        self._last[sym] = (start, champ)
        out = self._outs.pop((sym, start), None)
        if len(self._outs) > 4 * len(self.symbols):  # outputs whose kline never came
            self._outs.clear()
        if champ is not None and out is not None:
            self._pair(sym, start, champ, out, journal)
        return paired

    def _take_out(self, sym: str, start: int, out: _Out) -> None:
        """A challenger output: paired now if its kline was already taken (the hook may run
        after the observer, e.g. once per burst), else when the kline comes."""
        last = self._last.get(sym)
        if last is not None and last[0] == start:
            if last[1] is not None:
                self._pair(sym, start, last[1], out, True)
            return
        self._outs[(sym, start)] = out

    def _pair(self, sym: str, start: int, champ: _Champ, out: _Out, journal: bool) -> None:
        """Both models' probabilities for candle ``start``: they wait for the next candle."""
        key = f"{champ.sha256}|{out.name}|{out.version}"
        if key != self._key[sym]:  # a new pair: both windows and the paired rows start afresh
            self._key[sym] = key
            self.paired_total[sym] = 0
            for q in self.pairs[sym].values():
                q.clear()
        self.scorers["champion"].on_signal(sym, start, champ.p_up, champ.p_vol, champ.live, key)
        self.scorers["challenger"].on_signal(sym, start, out.p_up, out.p_vol, champ.live, key)
        if journal:
            self._rows.append(
                ShadowRow(
                    sym,
                    self.interval,
                    start,
                    "challenger",
                    out.p_up,
                    out.p_vol,
                    champ.live,
                    out.name,
                    out.version,
                    out.sha256,
                    int(time.time() * 1000),
                )
            )

    def _spawn_write(self, rows: list[ShadowRow]) -> None:
        self._batches += 1
        args = (self.journal.db, rows, self.journal.retention_ms, self._batches % PRUNE_EVERY == 1)
        if self._loop is None:  # no loop (a test driving it by hand): write now
            write_rows(*args)
            return
        fut = asyncio.ensure_future(self.call(write_rows, *args))
        self._writes.add(fut)
        fut.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[Any]) -> None:
        self._writes.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.errors += 1
            self.metrics.journal_errors.inc()
            log.error("shadow: journal write failed: %r", fut.exception())

    # ------------------------------------------------------------------ lifecycle
    async def start(self, challenger: Predictor | None) -> int:
        """Create the tables, rebuild the scores of ``challenger`` from the journal, then
        drain on the calling loop. Returns the challenger rows replayed."""
        await self.call(ensure_schema, self.journal.db)
        n = 0
        if challenger is not None:
            n = await self.call(self.rebuild, challenger.card.name, challenger.card.version)
            self.challenger = challenger
        self._loop = asyncio.get_running_loop()
        return n

    def rebuild(self, name: str, version: str) -> int:
        """Replay klines, champion signals and this challenger's rows (journal thread)."""
        replayed = 0
        for sym in self.symbols:
            klines = self.journal.klines(sym, self.interval)
            champs = {s.candle_start: s for s in self.journal.signals(sym, self.interval)}
            outs = {
                r.candle_start: r
                for r in read_rows(self.journal.db, sym, self.interval, name, version)
            }
            for k in klines:
                r = outs.get(k.start)
                if r is not None:
                    self._outs[(sym, k.start)] = _Out(
                        r.probability_up,
                        r.probability_high_vol,
                        r.model_name,
                        r.model_version,
                        r.model_sha256,
                    )
                    replayed += 1
                s = champs.get(k.start)
                champ = (
                    None
                    if s is None
                    else _Champ(s.probability_up, s.probability_high_vol, s.live, s.model_sha256)
                )
                self._take(sym, k.start, k.open, k.high, k.low, k.close, champ, journal=False)
        self._outs.clear()
        return replayed

    async def aclose(self) -> None:
        """Drain what the candle thread handed over and wait for the journal writes."""
        if self._inbox:
            self._drain()
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=5.0)

    # ------------------------------------------------------------------ the challenger
    def set_challenger(self, predictor: Predictor | None, *, fresh: bool = True) -> None:
        """Score ``predictor`` in shadow from the next closed candle (None: stop); ``fresh``
        False keeps the scores (the same challenger after a restart's rebuild)."""
        self.challenger = predictor
        for sym in self.symbols if fresh else ():
            self._key[sym] = ""
            self.paired_total[sym] = 0
            for q in self.pairs[sym].values():
                q.clear()
        g = self.metrics.challenger_info
        g.clear()
        for sym in self.symbols:
            for head in HEADS:
                with contextlib.suppress(KeyError):  # a series never set
                    self.metrics.live_log_loss.remove(sym, head, "challenger")
        if predictor is not None:
            g.labels(name=predictor.card.name, version=predictor.card.version).set(1)

    # ------------------------------------------------------------------ reports
    @property
    def scored(self) -> int:
        """Paired scored candles of the current pair, all symbols."""
        return sum(self.paired_total.values())

    def paired(self, symbol: str | None, head: str) -> PairedDiff | None:
        """Challenger − champion log loss over the paired window (one symbol, or pooled)."""
        syms = self.symbols if symbol is None else [symbol]
        rows = [r for s in syms for r in self.pairs[s][head]]
        return paired_difference([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def report(self) -> dict[str, Any]:
        """Per symbol and head: both roles' live figures over the same candles and the paired
        difference; and pooled over symbols, per head."""
        symbols: dict[str, Any] = {}
        for sym in self.symbols:
            heads: dict[str, Any] = {}
            for head in HEADS:
                figs = {}
                for role in ROLES:
                    rep = self.scorers[role].report(sym, head) if self.pairs[sym][head] else None
                    figs[role] = None if rep is None else _rounded(rep[0])
                d = self.paired(sym, head)
                heads[head] = {
                    "n": len(self.pairs[sym][head]),
                    "scored_total": self.paired_total[sym],
                    **figs,
                    "paired": None if d is None else d.as_dict(),
                }
            symbols[sym] = heads
        pooled = {}
        for head in HEADS:
            d = self.paired(None, head)
            pooled[head] = None if d is None else d.as_dict()
        return {"window": self.score_window, "symbols": symbols, "pooled": pooled}

    def update_gauges(self) -> None:
        """``apprentice_live_log_loss{role="challenger"}`` per symbol and head (scrape time)."""
        if self.challenger is None:
            return
        for sym in self.symbols:
            for head in HEADS:
                if not self.pairs[sym][head]:
                    continue
                rep = self.scorers["challenger"].report(sym, head)
                if rep is not None:
                    self.metrics.live_log_loss.labels(symbol=sym, head=head, role="challenger").set(
                        rep[0]["log_loss"]
                    )
