"""Feature drift: the population stability index of live features against training's.

The model card's ``feature_reference`` holds, per feature, the training rows' quantiles at
levels 0, 0.1, …, 1 (deciles). The interior quantiles are the bin edges; the expected share
of a bin is the gap between the levels of its edges. Live values are counted into the same
bins, and

    PSI = Σ_bins (a − e) · ln(a / e)

with a the live share and e the expected one, both floored at 1e-4 so an empty bin is finite.
Repeated edges (a feature with a mass point, e.g. many zero returns) are merged: the bin of a
repeated edge value v ends at the highest level whose quantile is v. Common reading: below 0.1
stable, 0.1–0.25 moderate shift, above 0.25 a population the model was not trained on.

:class:`LiveDrift` keeps the pooled live window's bin counts as vectors enter and leave, so a
candle costs O(F log bins) whatever the window's size (N symbols × the per-symbol window),
and a report or a scrape costs O(F × bins) instead of re-binning every vector each time.
Its figures equal :func:`psi` over the same values (same bins, same arithmetic).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

FLOOR = 1e-4
ALERT_PSI = 0.25  # the deploy/ alert threshold; shown next to each figure


def bins_of(levels: Sequence[float], quantiles: Sequence[float]) -> tuple[list[float], list[float]]:
    """(edges, expected shares) from quantile ``levels`` (0..1) and their values.

    ``edges`` are the distinct interior quantile values, ascending; bin j holds x with
    edges[j-1] < x ≤ edges[j] (the first bin everything ≤ edges[0], the last everything
    above edges[-1]); ``expected`` has one more entry than ``edges`` and sums to 1.
    """
    if len(levels) != len(quantiles) or len(levels) < 2:
        raise ValueError("feature reference needs matching levels and quantiles (at least 2)")
    top: dict[float, float] = {}  # distinct interior value -> highest level at that value
    for lv, q in zip(levels, quantiles, strict=True):
        if 0.0 < lv < 1.0 and math.isfinite(q):
            top[q] = max(top.get(q, 0.0), lv)
    edges = sorted(top)
    cdf = [0.0, *(top[e] for e in edges), 1.0]
    expected = [cdf[i + 1] - cdf[i] for i in range(len(cdf) - 1)]
    return edges, expected


def psi(
    live: Sequence[float] | npt.NDArray[np.float64],
    edges: Sequence[float],
    expected: Sequence[float],
) -> float:
    """PSI of ``live`` values (N,) against the binned reference; NaN without finite values."""
    x = np.asarray(live, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    # side="left": a value equal to an edge falls in the bin that edge closes
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left")
    return psi_of_counts(np.bincount(idx, minlength=len(expected)), expected)


def psi_of_counts(
    counts: Sequence[int] | npt.NDArray[np.int64], expected: Sequence[float]
) -> float:
    """PSI of live bin ``counts`` against the expected shares; NaN when nothing is counted."""
    c = np.asarray(counts, dtype=np.int64)
    n = int(c.sum())
    if n == 0:
        return math.nan
    a = np.maximum(c / n, FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


Reference = Sequence[tuple[Sequence[float], Sequence[float]] | None]  # per feature: bins or None


class LiveDrift:
    """The last ``maxlen`` live feature vectors (F,) and, once bound to a reference, their
    bin counts per feature, kept in step as vectors enter and leave (O(F log bins) each)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._vectors: deque[npt.NDArray[np.float64]] = deque()
        self.key: object = None  # what the counts were bound to (the card's reference)
        self._edges: list[list[float] | None] = []
        self._expected: list[list[float]] = []
        self._counts: list[list[int]] = []

    def __len__(self) -> int:
        return len(self._vectors)

    def __iter__(self) -> Iterator[npt.NDArray[np.float64]]:
        return iter(self._vectors)

    def append(self, vec: npt.NDArray[np.float64]) -> None:
        """One live vector; the oldest leaves once the window is full."""
        if len(self._vectors) == self.maxlen:
            self._count(self._vectors.popleft(), -1)
        self._vectors.append(vec)
        self._count(vec, 1)

    def _count(self, vec: npt.NDArray[np.float64], sign: int) -> None:
        for j, edges in enumerate(self._edges):
            if edges is None:
                continue
            x = float(vec[j])
            if math.isfinite(x):
                self._counts[j][bisect_left(edges, x)] += sign

    def bind(self, key: object, reference: Reference) -> None:
        """Count the window against ``reference`` (per feature (edges, expected) or None);
        a no-op when already bound to ``key``. O(window) once per new reference."""
        if key is self.key:
            return
        self.key = key
        self._edges = [None if r is None else list(r[0]) for r in reference]
        self._expected = [[] if r is None else list(r[1]) for r in reference]
        self._counts = [[0] * len(e) for e in self._expected]
        for vec in self._vectors:
            self._count(vec, 1)

    def psi(self, j: int) -> float:
        """PSI of feature ``j`` of the window against the bound reference (NaN: none)."""
        if j >= len(self._edges) or self._edges[j] is None:
            return math.nan
        return psi_of_counts(self._counts[j], self._expected[j])
