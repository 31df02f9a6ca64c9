"""McNemar and the day-block bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.scoring.metrics import log_loss, roc_auc
from training.scoring.stats import DAY_MS, block_bootstrap, day_blocks, mcnemar


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


def test_holm_by_hand() -> None:
    from training.scoring.stats import holm

    # sorted 0.01, 0.02, 0.04, 0.30 with m = 4: 4·0.01 = 0.04, 3·0.02 = 0.06, 2·0.04 = 0.08,
    # 1·0.30 = 0.30 (already monotone); returned in the input order
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    # monotone step-down: 3·0.01 = 0.03, 2·0.011 = 0.022 -> lifted to 0.03; capped at 1
    assert holm([0.01, 0.011, 0.9]) == pytest.approx([0.03, 0.03, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([1.5])


def test_gap_recovered_ratio_and_interval() -> None:
    from training.scoring.stats import gap_recovered

    rng = np.random.default_rng(1)
    n = 3000
    y = rng.integers(0, 2, n)
    signal = y + rng.normal(0, 1.0, n)
    teacher = signal + rng.normal(0, 0.3, n)  # strong
    scratch = signal + rng.normal(0, 2.0, n)  # weak
    half = 0.5 * (teacher + scratch)
    blocks = np.arange(n) // 100
    res = gap_recovered(y, [teacher], [scratch], [teacher], blocks, n_boot=200)
    assert res.ratio == pytest.approx(1.0) and res.ci_low == pytest.approx(1.0)
    res0 = gap_recovered(y, [scratch], [scratch], [teacher], blocks, n_boot=200)
    assert res0.ratio == pytest.approx(0.0) and res0.ci_high == pytest.approx(0.0)
    mid = gap_recovered(y, [half], [scratch], [teacher], blocks, n_boot=200)
    assert 0.0 < mid.ci_low <= mid.ratio <= mid.ci_high < 1.2
    assert mid.teacher_gap > mid.student_gap > 0 and mid.n_valid == 200
    # no gap: the ratio is undefined
    flat = gap_recovered(y, [teacher], [teacher], [teacher], blocks, n_boot=20)
    assert math.isnan(flat.ratio) and flat.n_valid == 0


def test_runs_bootstrap_scores_the_mean_single_model_not_the_seed_average() -> None:
    from training.scoring.metrics import roc_auc
    from training.scoring.stats import runs_bootstrap

    rng = np.random.default_rng(2)
    n = 2000
    y = rng.integers(0, 2, n)
    blocks = np.arange(n) // 100
    a1, a2 = y + rng.normal(0, 1.5, n), y + rng.normal(0, 1.5, n)
    b = y + rng.normal(0, 1.5, n)
    # one run each: the same as the single-array bootstrap
    one = runs_bootstrap(y, [a1], [b], blocks, "auc", n_boot=100)
    ref = block_bootstrap(y, a1, b, blocks, "auc", n_boot=100)
    assert one.diff == pytest.approx(ref.diff) and one.p_value == pytest.approx(ref.p_value)
    # two seeds: the mean of the seeds' AUCs, which is below the AUC of their average
    two = runs_bootstrap(y, [a1, a2], [b], blocks, "auc", n_boot=100)
    mean_auc = 0.5 * (roc_auc(y, a1) + roc_auc(y, a2))
    assert two.diff == pytest.approx(mean_auc - roc_auc(y, b))
    assert roc_auc(y, (a1 + a2) / 2) - roc_auc(y, b) > two.diff
    # log loss: the mean of the seeds' log losses
    pa1, pa2, pb = (1 / (1 + np.exp(-(v - 0.5))) for v in (a1, a2, b))
    ll = runs_bootstrap(y, [pa1, pa2], [pb], blocks, "log_loss", n_boot=50)
    want = 0.5 * (log_loss(y, pa1) + log_loss(y, pa2)) - log_loss(y, pb)
    assert ll.diff == pytest.approx(want, abs=1e-9)


def test_auc_interval_is_the_bootstrap_against_a_constant_shifted_by_a_half() -> None:
    from training.scoring.stats import auc_interval, runs_bootstrap

    rng = np.random.default_rng(3)
    n = 3000
    y = rng.integers(0, 2, n)
    blocks = np.arange(n) // 100  # 30 "days"
    p = y + rng.normal(0, 2.0, n)
    got = auc_interval(y, p, blocks, n_boot=200, seed=4)
    assert got.auc == pytest.approx(roc_auc(y, p)) and got.n_blocks == 30
    assert got.ci_low < got.auc < got.ci_high
    # a constant scores AUC 0.5 under every resample: the paired interval is this one − 0.5
    vs_const = runs_bootstrap(y, [p], [np.zeros(n)], blocks, "auc", n_boot=200, seed=4)
    assert got.ci_low - 0.5 == pytest.approx(vs_const.ci_low)
    assert got.ci_high - 0.5 == pytest.approx(vs_const.ci_high)
    # more days of the same signal: a narrower interval
    big = np.arange(4 * n) // 100
    y4 = rng.integers(0, 2, 4 * n)
    wide = auc_interval(y4, y4 + rng.normal(0, 2.0, 4 * n), big, n_boot=200)
    assert wide.ci_high - wide.ci_low < got.ci_high - got.ci_low


def test_hierarchical_bootstrap_widens_with_seed_spread() -> None:
    """Issue 29: seeds drawn with replacement put training randomness into the interval."""
    from training.scoring.stats import runs_bootstrap

    rng = np.random.default_rng(5)
    n = 3000
    y = rng.integers(0, 2, n)
    blocks = np.arange(n) // 100
    base = y + rng.normal(0, 1.5, n)
    # four seeds that agree vs four seeds of which two are much worse
    close = [base + rng.normal(0, 0.05, n) for _ in range(4)]
    spread = [base + rng.normal(0, s, n) for s in (0.05, 0.05, 3.0, 3.0)]
    b = [y + rng.normal(0, 1.5, n)]
    flat = runs_bootstrap(y, close, b, blocks, "auc", n_boot=400)
    wide = runs_bootstrap(y, spread, b, blocks, "auc", n_boot=400)
    days_only = runs_bootstrap(y, spread, b, blocks, "auc", n_boot=400, seeds_too=False)
    assert wide.ci_high - wide.ci_low > 1.5 * (days_only.ci_high - days_only.ci_low)
    assert flat.ci_high - flat.ci_low < wide.ci_high - wide.ci_low
    # the observed difference is the mean single model's, whatever the resampling
    assert wide.diff == pytest.approx(days_only.diff)


def test_normal_p_is_not_floored_by_the_resample_count() -> None:
    from training.scoring.stats import normal_p, runs_bootstrap

    rng = np.random.default_rng(6)
    n = 4000
    y = rng.integers(0, 2, n)
    blocks = np.arange(n) // 100
    good, bad = y + rng.normal(0, 0.8, n), y + rng.normal(0, 2.0, n)
    r = runs_bootstrap(y, [good], [bad], blocks, "auc", n_boot=100)
    assert 0 <= r.p_value < 1 / 101  # below the old floor of 1/(B + 1)
    assert normal_p(0.0, np.zeros(5)) == 1.0
    # z = 1.96 gives p ≈ 0.05
    boot = np.array([-1.0, 1.0] * 500)
    assert normal_p(1.96 * float(np.std(boot, ddof=1)), boot) == pytest.approx(0.05, abs=1e-3)


def test_equivalence_verdicts() -> None:
    from training.scoring.stats import equivalence

    rng = np.random.default_rng(7)
    n = 20_000
    y = rng.integers(0, 2, n)
    blocks = np.arange(n) // 200
    a = y + rng.normal(0, 1.5, n)
    same = [a + rng.normal(0, 0.01, n) for _ in range(3)]
    eq = equivalence(y, same, [a], blocks, margin=0.002, n_boot=300)
    assert eq.verdict == "equivalent" and eq.p_tost < 0.05
    assert -0.002 < eq.ci90[0] <= eq.diff <= eq.ci90[1] < 0.002
    worse = [y + rng.normal(0, 3.0, n)]
    w = equivalence(y, worse, [a], blocks, margin=0.002, n_boot=300)
    assert w.verdict == "worse" and w.ci95[1] < 0
    b = equivalence(y, [a], worse, blocks, margin=0.002, n_boot=300)
    assert b.verdict == "better"
    # a tiny sample: nothing can be said
    small = np.arange(400)
    inc = equivalence(
        y[small], [a[small] + rng.normal(0, 0.5, 400)], [a[small]], blocks[small] // 1, 0.002, 200
    )
    assert inc.verdict in ("inconclusive", "worse")


def test_per_seed_matches_the_one_resample_auc() -> None:
    from training.scoring.stats import _block_weights, _RunsAUC

    rng = np.random.default_rng(8)
    n = 1500
    y = rng.integers(0, 2, n)
    blocks = np.arange(n) // 50
    runs = [np.round(y + rng.normal(0, 1.0, n), 1) for _ in range(2)]  # ties on purpose
    f = _RunsAUC(y, runs, blocks)
    counts = _block_weights(30, 70, 3)
    mat = f.per_seed(counts, chunk=16)
    for j in (0, 15, 16, 69):
        one = [_RunsAUC(y, [r], blocks)(counts[j]) for r in runs]
        np.testing.assert_allclose(mat[:, j], one, rtol=0, atol=1e-12)
