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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    a = np.bincount(idx, minlength=len(expected)) / x.size
    a = np.maximum(a, FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))
