"""Champion or challenger: the paired live comparison and the promotion rule (pure).

:func:`paired_difference`: per scored candle the log loss of the challenger minus the
champion's on the same candle and label; its mean and a block-bootstrap 95 % interval
(contiguous blocks of ``block`` candles resampled with replacement, so the serial correlation
of neighbouring candles stays inside a block instead of counting as independent evidence).
Negative: the challenger is better.

:func:`decide`: the rule of DESIGN section 12. A promotion is refused unless the challenger
has at least ``min_scored`` paired candles and its volatility-head live log loss is not worse
than the champion's by more than ``margin`` nats (the point estimate of the paired mean;
the interval is reported, not required); ``force`` skips both checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-7  # the clip of service.monitor.live_metrics.log_loss
BLOCK = 12  # candles per bootstrap block: an hour of 5-minute candles
N_BOOT = 1000
RULE_HEAD = "volatility"


def row_log_loss(y: Sequence[float], p: Sequence[float]) -> np.ndarray:
    """Binary cross-entropy per row in nats, p clipped as the live scores clip it."""
    ya = np.asarray(y, dtype=np.float64)
    pa = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return -(ya * np.log(pa) + (1.0 - ya) * np.log(1.0 - pa))


@dataclass(frozen=True, slots=True)
class PairedDiff:
    """Challenger − champion live log loss over ``n`` paired candles (nats)."""

    n: int
    diff: float
    low: float
    high: float
    champion: float
    challenger: float

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {
            "n": self.n,
            "diff": round(self.diff, 6),
            "ci95": [round(self.low, 6), round(self.high, 6)],
            "champion_log_loss": round(self.champion, 6),
            "challenger_log_loss": round(self.challenger, 6),
        }


def paired_difference(
    y: Sequence[float],
    p_champion: Sequence[float],
    p_challenger: Sequence[float],
    *,
    block: int = BLOCK,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> PairedDiff | None:
    """Mean of log loss(challenger) − log loss(champion) per row, with a moving-block
    bootstrap 95 % percentile interval; None without rows."""
    if not (len(y) == len(p_champion) == len(p_challenger)):
        raise ValueError("labels and both models' probabilities must be paired row by row")
    n = len(y)
    if n == 0:
        return None
    ll_a = row_log_loss(y, p_champion)
    ll_b = row_log_loss(y, p_challenger)
    d = ll_b - ll_a  # (n,)
    mean = float(d.mean())
    if n < 2:
        return PairedDiff(n, mean, mean, mean, float(ll_a.mean()), float(ll_b.mean()))
    size = max(1, min(block, n))
    starts = n - size + 1  # moving blocks: every start position
    k = math.ceil(n / size)  # blocks per resample
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, starts, size=(n_boot, k))  # (n_boot, k)
    csum = np.concatenate([[0.0], np.cumsum(d)])
    block_sums = csum[picks + size] - csum[picks]  # (n_boot, k)
    boot = block_sums.sum(axis=1) / (k * size)
    low, high = np.percentile(boot, [2.5, 97.5])
    return PairedDiff(n, mean, float(low), float(high), float(ll_a.mean()), float(ll_b.mean()))


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to promote, and why (the 409's detail when refused)."""

    promote: bool
    reason: str


def decide(
    scored: int,
    vol: PairedDiff | None,
    *,
    min_scored: int,
    margin: float,
    force: bool = False,
) -> Decision:
    """The promotion rule: enough paired candles and not worse on the volatility head."""
    if force:
        return Decision(True, "forced: the rule was not applied")
    if scored < min_scored or vol is None:
        return Decision(
            False,
            f"the challenger has {scored} paired scored candles, fewer than "
            f"APPRENTICE_PROMOTE_MIN_SCORED={min_scored}",
        )
    verdict = (
        f"volatility live log loss challenger − champion = {vol.diff:+.4f} nats "
        f"(95 % block-bootstrap interval [{vol.low:+.4f}, {vol.high:+.4f}], n={vol.n})"
    )
    if vol.diff > margin:
        return Decision(
            False, f"the challenger is worse: {verdict} exceeds APPRENTICE_PROMOTE_MARGIN={margin}"
        )
    return Decision(True, f"not worse than the champion by more than {margin}: {verdict}")
