"""McNemar and the day-block bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics_eval import log_loss, roc_auc
from training.stats import DAY_MS, block_bootstrap, day_blocks, mcnemar


def test_mcnemar_exact_by_hand() -> None:
    # A right & B wrong on 1 row, A wrong & B right on 5 rows (plus agreements)
    y = np.array([1] * 10)
    a = np.array([1, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    res = mcnemar(y, a, b)
    assert (res.b, res.c, res.method) == (1, 5, "exact")
    # two-sided exact: 2 · P(X ≤ 1 | n = 6, ½) = 2 · 7/64
    assert res.p_value == pytest.approx(14 / 64)
    assert mcnemar(y, a, a).p_value == 1.0


def test_mcnemar_chi2_matches_formula() -> None:
    y = np.ones(200, dtype=int)
    a = np.r_[np.ones(60), np.zeros(40), np.ones(100)]
    b = np.r_[np.zeros(60), np.ones(40), np.ones(100)]
    res = mcnemar(y, a, b, exact=False)
    stat = (abs(60 - 40) - 1) ** 2 / 100
    assert res.statistic == pytest.approx(stat)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(stat / 2)))
    assert mcnemar(y, a, b, exact=True).p_value == pytest.approx(res.p_value, rel=0.2)


def _days(n: int, per_day: int) -> np.ndarray:
    return (np.arange(n) // per_day) * DAY_MS + 1_700_000_000_000


def test_day_blocks_numbering() -> None:
    t = np.array([0, DAY_MS - 1, DAY_MS, 5 * DAY_MS])
    assert day_blocks(t).tolist() == [0, 0, 1, 2]


def test_bootstrap_observed_difference_and_power() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + 0.1 * rng.standard_normal(n), 0.01, 0.99)
    noise = rng.random(n)
    blocks = day_blocks(_days(n, 100))
    r = block_bootstrap(y, good, noise, blocks, metric="auc", n_boot=200)
    assert r.diff == pytest.approx(roc_auc(y, good) - roc_auc(y, noise))
    assert r.p_value < 0.05 and r.ci_low > 0
    r2 = block_bootstrap(y, good, noise, blocks, metric="log_loss", n_boot=200)
    assert r2.diff == pytest.approx(log_loss(y, good) - log_loss(y, noise))
    assert r2.n_blocks == 30


def test_bootstrap_identical_models_not_significant() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    r = block_bootstrap(y, p, p.copy(), day_blocks(_days(n, 50)), metric="auc", n_boot=100)
    assert r.diff == 0.0 and r.p_value == 1.0
    with pytest.raises(ValueError):
        block_bootstrap(y, p, p, day_blocks(_days(n, 50)), metric="accuracy", n_boot=10)
