"""The one feature pipeline (DESIGN section 3), shared by training and the service.

Two implementations of the same definitions:

* :func:`batch_features` — vectorised numpy over a whole history, for training;
* :class:`IncrementalFeatures` — O(1) per confirmed kline with fixed ring buffers, for the
  live service (no history growth; cost depends on the window lengths only).

They agree to 1e-9 on real data (a test checks every bundled file). This module is a leaf:
numpy and the standard library only, no I/O, no asyncio, so the service stays torch-free.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "logret_1",
    "open_rel",
    "high_rel",
    "low_rel",
    "range_rel",
    "vol_z",
    "vwap_rel",
    "volatility_20",
    "sma10_rel",
    "sma30_rel",
    "rsi_14",
)
N_FEATURES = len(FEATURE_NAMES)
WINDOW = 32  # T: bars per model input window

VOL_Z_BARS = 48
VWAP_BARS = 12
VOLATILITY_BARS = 20
SMA_FAST = 10
SMA_SLOW = 30
RSI_PERIOD = 14
FEATURE_VERSION = 1
VOL_LABEL_BARS = 48  # the volatility label's median look-back (bars t-47..t)

# Index of the first bar with a full feature vector: vol_z needs 48 bars (t-47..t) and is
# the longest look-back (volatility_20 needs 21 closes, sma30 30, RSI 15).
WARMUP_BARS = max(VOL_Z_BARS, VOLATILITY_BARS + 1, SMA_SLOW, RSI_PERIOD + 1, VWAP_BARS)

FEATURE_SPEC: dict[str, object] = {
    "version": FEATURE_VERSION,
    "names": list(FEATURE_NAMES),
    "params": {
        "vol_z_bars": VOL_Z_BARS,
        "vwap_bars": VWAP_BARS,
        "vwap_price": "typical",
        "volatility_bars": VOLATILITY_BARS,
        "sma_fast": SMA_FAST,
        "sma_slow": SMA_SLOW,
        "rsi_period": RSI_PERIOD,
        "rsi_scale": "(rsi-50)/50",
        "window": WINDOW,
        "layout": "channels_first",
        "label": "next candle close > open",
    },
}


def feature_spec_hash(spec: dict[str, object] | None = None) -> str:
    """sha256 of the canonical JSON of the feature spec (names, order, parameters, version)."""
    blob = json.dumps(FEATURE_SPEC if spec is None else spec, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


FEATURE_SPEC_HASH = feature_spec_hash()


# --------------------------------------------------------------------------- batch path


def _rolling(x: F64, n: int) -> npt.NDArray[np.float64]:
    """(N - n + 1, n) read-only view of the length-n windows of x."""
    return sliding_window_view(x, n)


def _rsi_scaled(close: F64) -> F64:
    """(RSI - 50) / 50 with Wilder smoothing seeded by the mean of the first 14 changes."""
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n <= RSI_PERIOD:
        return out
    change = np.diff(close)  # (N-1,), change[i-1] = c_i - c_{i-1}
    gains = np.maximum(change, 0.0).tolist()
    losses = np.maximum(-change, 0.0).tolist()
    g = math.fsum(gains[:RSI_PERIOD]) / RSI_PERIOD
    loss = math.fsum(losses[:RSI_PERIOD]) / RSI_PERIOD
    values = [math.nan] * n
    values[RSI_PERIOD] = _rsi_value(g, loss)
    # Infinite memory: a sequential recurrence, written exactly as the incremental path does.
    for i in range(RSI_PERIOD, n - 1):
        g = (g * (RSI_PERIOD - 1) + gains[i]) / RSI_PERIOD
        loss = (loss * (RSI_PERIOD - 1) + losses[i]) / RSI_PERIOD
        values[i + 1] = _rsi_value(g, loss)
    out[:] = values
    return out


def _rsi_value(g: float, loss: float) -> float:
    rsi = (100.0 if g > 0.0 else 50.0) if loss == 0.0 else 100.0 - 100.0 / (1.0 + g / loss)
    return (rsi - 50.0) / 50.0


def batch_features(
    open_: npt.ArrayLike,
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    close: npt.ArrayLike,
    volume: npt.ArrayLike,
) -> F64:
    """Feature matrix (N, F) float64 over a whole history; rows without full history are NaN."""
    o = np.asarray(open_, dtype=np.float64)
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    n = c.shape[0]
    out = np.full((n, N_FEATURES), np.nan)
    if n == 0:
        return out

    ratio = c[1:] / c[:-1]
    out[1:, 0] = ratio - 1.0
    logret = np.full(n, np.nan)
    logret[1:] = np.log(ratio)
    out[:, 1] = logret
    out[:, 2] = o / c - 1.0
    out[:, 3] = h / c - 1.0
    out[:, 4] = lo / c - 1.0
    out[:, 5] = (h - lo) / c

    if n >= VOL_Z_BARS:
        x = np.log1p(v)
        w = _rolling(x, VOL_Z_BARS)  # (N-47, 48)
        mean = w.mean(axis=1)
        std = np.sqrt(((w - mean[:, None]) ** 2).mean(axis=1))
        flat = w.max(axis=1) == w.min(axis=1)  # exact zero-variance test, immune to rounding
        z = np.where(
            flat | (std == 0.0), 0.0, (x[VOL_Z_BARS - 1 :] - mean) / np.where(flat, 1.0, std)
        )
        out[VOL_Z_BARS - 1 :, 6] = z

    if n >= VWAP_BARS:
        tp = (h + lo + c) / 3.0
        pv = _rolling(tp * v, VWAP_BARS).sum(axis=1)
        vs = _rolling(v, VWAP_BARS).sum(axis=1)
        cc = c[VWAP_BARS - 1 :]
        safe = np.where(vs == 0.0, 1.0, vs)
        vwap = np.where(vs == 0.0, cc, pv / safe)  # Σ v = 0 → vwap_rel 0 exactly
        out[VWAP_BARS - 1 :, 7] = cc / vwap - 1.0

    if n > VOLATILITY_BARS:
        w = _rolling(logret[1:], VOLATILITY_BARS)  # windows of logret_1 over t-19..t
        mean = w.mean(axis=1)
        out[VOLATILITY_BARS:, 8] = np.sqrt(((w - mean[:, None]) ** 2).mean(axis=1))

    for col, bars in ((9, SMA_FAST), (10, SMA_SLOW)):
        if n >= bars:
            out[bars - 1 :, col] = c[bars - 1 :] / _rolling(c, bars).mean(axis=1) - 1.0

    out[:, 11] = _rsi_scaled(c)
    out[: WARMUP_BARS - 1] = np.nan  # a row is valid only when every feature is
    return out


# ---------------------------------------------------------------------- incremental path


_RING = VOL_Z_BARS  # one ring length for every buffer: the longest look-back


def _pstdev(xs: list[float]) -> float:
    """Population standard deviation, two-pass (exact where sums of squares lose digits)."""
    m = sum(xs) / len(xs)
    return math.sqrt(sum([(x - m) * (x - m) for x in xs]) / len(xs))


def _zscore_last(buf: list[float], last: float) -> float:
    """(last - mean) / std over a full ring (ddof 0); 0 when the std is 0.

    Two-pass like numpy. Equal values can leave a rounding-level variance, so a tiny
    variance triggers the exact all-equal test (rare, so the common case stays cheap).
    """
    n = len(buf)
    mean = sum(buf) / n
    var = sum([(x - mean) * (x - mean) for x in buf]) / n
    if var <= 1e-24 * (mean * mean + 1.0) and max(buf) == min(buf):
        return 0.0
    return 0.0 if var == 0.0 else (last - mean) / math.sqrt(var)


class IncrementalFeatures:
    """O(1) feature updates, one confirmed kline at a time.

    Memory is fixed: four rings of 48 floats (the longest look-back) sharing one write
    position, plus RSI's two Wilder averages. ``update`` returns the (F,) float64 vector for
    the kline, or None while warming up. Written for CPython speed (plain lists, no method
    calls on the hot path): a few microseconds per kline, independent of history length.
    """

    __slots__ = ("_close", "_g", "_i", "_logret", "_loss", "_n", "_pre", "_pv", "_vol", "_volx")

    def __init__(self) -> None:
        self._close = [0.0] * _RING
        self._logret = [0.0] * _RING
        self._volx = [0.0] * _RING  # ln(1 + volume)
        self._pv = [0.0] * _RING  # typical price × volume
        self._vol = [0.0] * _RING
        self._i = 0  # next write position
        self._g = 0.0
        self._loss = 0.0
        self._n = 0  # klines seen
        self._pre: tuple[float, ...] | None = None  # see prepare()

    @property
    def bars_seen(self) -> int:
        """Number of klines fed so far."""
        return self._n

    @property
    def warm(self) -> bool:
        """True once ``update`` returns full vectors."""
        return self._n >= WARMUP_BARS

    def _recent(self, buf: list[float], k: int) -> list[float]:
        """The k newest values of ``buf``, oldest first (k ≤ 48)."""
        i = self._i  # already advanced past the newest value
        return buf[i - k : i] if i >= k else buf[i - k :] + buf[:i]

    def prepare(self) -> None:
        """Sum now what the next update's windows share with the current ring.

        Every window of the next update is the new value plus the k - 1 newest values in
        the ring, so their sums (and sums of squares for the two variances) are known before
        the candle closes; ``update`` computes them itself when nobody called this first.
        """
        vx = self._recent(self._volx, VOL_Z_BARS - 1)
        lr = self._recent(self._logret, VOLATILITY_BARS - 1)
        self._pre = (
            sum(vx),
            sum([x * x for x in vx]),
            sum(self._recent(self._vol, VWAP_BARS - 1)),
            sum(self._recent(self._pv, VWAP_BARS - 1)),
            sum(lr),
            sum([x * x for x in lr]),
            sum(self._recent(self._close, SMA_FAST - 1)),
            sum(self._recent(self._close, SMA_SLOW - 1)),
        )

    def update(
        self, open_: float, high: float, low: float, close: float, volume: float
    ) -> F64 | None:
        """Feed one confirmed kline; return its feature vector (F,) or None while warming up."""
        n = self._n
        if n + 1 >= WARMUP_BARS and self._pre is None:
            self.prepare()
        pre, self._pre = self._pre, None
        i = self._i
        prev = self._close[i - 1]  # i - 1 = -1 wraps to the newest slot
        self._close[i] = close
        self._volx[i] = math.log1p(volume)
        self._pv[i] = (high + low + close) / 3.0 * volume
        self._vol[i] = volume
        self._n = n + 1
        self._i = 0 if i + 1 == _RING else i + 1
        if n == 0:
            return None
        ratio = close / prev
        logret = math.log(ratio)
        self._logret[i] = logret

        change = close - prev
        if n == RSI_PERIOD:
            # Seeding: the simple mean of the first 14 changes (closes 0..14 are in the ring).
            closes = self._recent(self._close, RSI_PERIOD + 1)
            diffs = [b - a for a, b in itertools.pairwise(closes)]
            self._g = math.fsum([d for d in diffs if d > 0.0]) / RSI_PERIOD
            self._loss = math.fsum([-d for d in diffs if d < 0.0]) / RSI_PERIOD
        elif n > RSI_PERIOD:
            self._g = (self._g * (RSI_PERIOD - 1) + (change if change > 0.0 else 0.0)) / RSI_PERIOD
            self._loss = (
                self._loss * (RSI_PERIOD - 1) + (-change if change < 0.0 else 0.0)
            ) / RSI_PERIOD
        if n + 1 < WARMUP_BARS:
            return None

        # Windows = prepared sums of the k - 1 previous values + this kline's value. A
        # variance from sums of squares loses digits when it is small next to the squared
        # mean; then the exact two-pass form over the ring decides (rare, never on real data
        # so far: log-volume and log-return variances are ≥ 1e-3 of their mean squares).
        assert pre is not None  # prepared above once the windows are due
        sx, sxx, svol, spv, slr, slrr, sc_fast, sc_slow = pre
        vx = self._volx[i]
        mean = (sx + vx) / VOL_Z_BARS
        msq = (sxx + vx * vx) / VOL_Z_BARS
        var = msq - mean * mean
        exact = var <= 1e-3 * msq
        vol_z = _zscore_last(self._volx, vx) if exact else (vx - mean) / math.sqrt(var)
        vsum = svol + volume
        vwap_rel = 0.0 if vsum == 0.0 else close / ((spv + self._pv[i]) / vsum) - 1.0
        m = (slr + logret) / VOLATILITY_BARS
        msq = (slrr + logret * logret) / VOLATILITY_BARS
        var = msq - m * m
        exact = var <= 1e-3 * msq
        volatility = (
            _pstdev(self._recent(self._logret, VOLATILITY_BARS)) if exact else math.sqrt(var)
        )
        sma10 = (sc_fast + close) / SMA_FAST
        sma30 = (sc_slow + close) / SMA_SLOW
        return np.array(
            (
                ratio - 1.0,
                logret,
                open_ / close - 1.0,
                high / close - 1.0,
                low / close - 1.0,
                (high - low) / close,
                vol_z,
                vwap_rel,
                volatility,
                close / sma10 - 1.0,
                close / sma30 - 1.0,
                _rsi_value(self._g, self._loss),
            ),
            dtype=np.float64,
        )


class FeatureWindow:
    """The last T feature vectors as a contiguous (F, T) view, O(1) per push.

    Each vector is written twice into a (F, 2T) buffer so that the newest T columns are
    always one slice; ``view()`` returns it without copying (its rows have stride 2T).
    """

    __slots__ = ("_buf", "_count", "_i", "window")

    def __init__(self, window: int = WINDOW, n_features: int = N_FEATURES) -> None:
        self.window = window
        self._buf = np.zeros((n_features, 2 * window), dtype=np.float64)
        self._i = 0
        self._count = 0

    @property
    def full(self) -> bool:
        return self._count >= self.window

    @property
    def pushes(self) -> int:
        """Vectors pushed so far (a streamed student's partials are valid for one push)."""
        return self._count

    def push(self, vec: F64) -> None:
        i = self._i
        self._buf[:, i] = vec
        self._buf[:, i + self.window] = vec
        self._i = (i + 1) % self.window
        self._count += 1

    def view(self) -> F64:
        """(F, T) oldest → newest; valid once ``full``."""
        return self._buf[:, self._i : self._i + self.window]


# ------------------------------------------------------------------- labels and windows


def make_labels(open_: npt.ArrayLike, close: npt.ArrayLike) -> F64:
    """Direction label for bar t: 1.0 if candle t+1 closes above its open, else 0.0; NaN for
    the last bar."""
    o = np.asarray(open_, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    y = np.full(c.shape[0], np.nan)
    y[:-1] = (c[1:] > o[1:]).astype(np.float64)
    return y


def make_vol_labels(high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike) -> F64:
    """Volatility label for bar t (DESIGN section 3): 1.0 if candle t+1's range (h − l)/c is
    above the median of (h − l)/c over bars t−47..t, else 0.0.

    NaN until 48 ranges exist (t < 47) and for the last bar (no next candle). Strictly above:
    a next range equal to the median is 0.
    """
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    r = (h - lo) / c  # (N,) range_rel of every bar
    n = r.shape[0]
    y = np.full(n, np.nan)
    if n <= VOL_LABEL_BARS:
        return y
    med = np.median(_rolling(r, VOL_LABEL_BARS), axis=1)  # (N-47,), med[k] over r[k..k+47]
    # bar t = k + 47 gets med[k]; its next range is r[t + 1]; the last bar has none.
    t = np.arange(VOL_LABEL_BARS - 1, n - 1)
    y[t] = (r[t + 1] > med[: t.shape[0]]).astype(np.float64)
    return y


def make_head_labels(
    open_: npt.ArrayLike, high: npt.ArrayLike, low: npt.ArrayLike, close: npt.ArrayLike
) -> F64:
    """Both labels (N, 2): column 0 direction, column 1 volatility (``model_card.HEADS``)."""
    return np.stack([make_labels(open_, close), make_vol_labels(high, low, close)], axis=1)


def window_ends(features: F64, labels: F64 | None = None, window: int = WINDOW) -> I64:
    """Indices t whose window t-T+1..t is fully valid (and whose labels are, if given)."""
    valid = np.asarray(~np.isnan(features).any(axis=1), dtype=bool)
    valid_label: npt.NDArray[np.bool_] = np.ones(valid.shape, dtype=bool)
    if labels is not None:  # (N,) or (N, H): every head's label must exist
        lab = np.asarray(labels, dtype=np.float64)
        valid_label = np.asarray(~np.isnan(lab.reshape(lab.shape[0], -1)).any(axis=1))
    if features.shape[0] < window:
        return np.zeros(0, dtype=np.int64)
    full = _rolling(np.asarray(valid, dtype=np.float64), window).min(axis=1) == 1.0  # (N-T+1,)
    ends = np.arange(window - 1, features.shape[0], dtype=np.int64)
    keep: npt.NDArray[np.bool_] = full & np.asarray(valid_label[window - 1 :], dtype=bool)
    return ends[keep]


def make_windows(features: F64, ends: npt.ArrayLike, window: int = WINDOW) -> F32:
    """Model inputs (M, F, T) float32 for the given window end indices (channels first)."""
    idx = np.asarray(ends, dtype=np.int64)
    view = sliding_window_view(features, window, axis=0)  # (N-T+1, F, T)
    return np.ascontiguousarray(view[idx - (window - 1)], dtype=np.float32)
