"""Scores of probabilities against 0/1 outcomes, pure Python (the live model's report card).

The service scores each served probability once the outcome is known
(``service.monitor.live_score``) and reports these figures over the last N scored candles.
Conventions match training's ``training.scoring.metrics`` so live and test figures compare:
a prediction counts as class 1 when p > 0.5; log loss in nats with p clipped to [1e-7, 1 −
1e-7]; AUC by the Mann–Whitney statistic with midranks for ties (0.5 when only one class is
present).

The no-skill reference is the constant prediction b = base rate of the window itself: its log
loss is the entropy H(b), its Brier score b(1 − b), its accuracy max(b, 1 − b), its AUC 0.5.
A model is only useful where it beats that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

EPS = 1e-7


class Scores(TypedDict):
    """Figures over one window of (label, probability) pairs."""

    n: int
    accuracy: float
    log_loss: float
    brier: float
    auc: float
    base_rate: float


def _check(y: Sequence[float], p: Sequence[float]) -> None:
    if len(y) != len(p):
        raise ValueError(f"labels and probabilities differ in length: {len(y)} vs {len(p)}")
    if not y:
        raise ValueError("scores need at least one scored candle")


def accuracy(y: Sequence[float], p: Sequence[float]) -> float:
    """Share of rows where (p > 0.5) equals the label."""
    _check(y, p)
    return sum((pi > 0.5) == (yi > 0.5) for yi, pi in zip(y, p, strict=True)) / len(y)


def log_loss(y: Sequence[float], p: Sequence[float]) -> float:
    """Mean binary cross-entropy in nats."""
    _check(y, p)
    total = 0.0
    for yi, pi in zip(y, p, strict=True):
        q = min(max(pi, EPS), 1.0 - EPS)
        total -= math.log(q) if yi > 0.5 else math.log(1.0 - q)
    return total / len(y)


def brier(y: Sequence[float], p: Sequence[float]) -> float:
    """Mean squared difference of probability and label."""
    _check(y, p)
    return math.fsum((pi - yi) ** 2 for yi, pi in zip(y, p, strict=True)) / len(y)


def auc(y: Sequence[float], p: Sequence[float]) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counted one half."""
    _check(y, p)
    order = sorted(range(len(p)), key=lambda i: p[i])
    ranks = [0.0] * len(p)
    i = 0
    while i < len(order):  # midranks: a run of equal scores shares its mean 1-based rank
        j = i
        while j + 1 < len(order) and p[order[j + 1]] == p[order[i]]:
            j += 1
        mid = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    n1 = sum(1 for yi in y if yi > 0.5)
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return 0.5
    u = sum(r for r, yi in zip(ranks, y, strict=True) if yi > 0.5) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def score(y: Sequence[float], p: Sequence[float]) -> Scores:
    """All figures of one window."""
    return Scores(
        n=len(y),
        accuracy=accuracy(y, p),
        log_loss=log_loss(y, p),
        brier=brier(y, p),
        auc=auc(y, p),
        base_rate=sum(1 for yi in y if yi > 0.5) / len(y) if y else math.nan,
    )


def no_skill(y: Sequence[float]) -> Scores:
    """The constant prediction b = base rate of ``y``, scored on ``y`` (closed forms)."""
    if not y:
        raise ValueError("scores need at least one scored candle")
    b = sum(1 for yi in y if yi > 0.5) / len(y)
    q = min(max(b, EPS), 1.0 - EPS)
    entropy = -(b * math.log(q) + (1.0 - b) * math.log(1.0 - q))
    return Scores(
        n=len(y),
        accuracy=max(b, 1.0 - b),
        log_loss=entropy,
        brier=b * (1.0 - b),
        auc=0.5,
        base_rate=b,
    )
