"""Paired significance tests between two models scored on the same rows.

- McNemar on the disagreements for accuracy (exact binomial, or χ² with continuity
  correction for large counts);
- a day-block bootstrap for differences in AUC and log loss: whole UTC days are resampled
  with replacement, so the strong autocorrelation of overlapping windows within a day is kept
  inside each block instead of being counted as independent evidence; where a model has
  several training runs (seeds) the bootstrap is hierarchical: each resample also draws each
  model's seeds with replacement, so the interval includes training randomness (issue 29);
- an equivalence test (TOST) of a difference against a margin stated in advance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

DAY_MS = 86_400_000
EPS = 1e-7


@dataclass(frozen=True)
class McNemarResult:
    """b: A right & B wrong, c: A wrong & B right; p two-sided."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X ≤ k) for X ~ Binomial(n, ½), summed in log space (stable for large n)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
        for i in range(k + 1)
    ]
    top = max(log_terms)
    return math.exp(top) * sum(math.exp(t - top) for t in log_terms)


def mcnemar(
    y: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike, exact: bool | None = None
) -> McNemarResult:
    """McNemar's test that models A and B have the same accuracy on the same rows.

    `pred_a`, `pred_b` are 0/1 predictions (or probabilities, thresholded at 0.5).
    `exact=None` picks the exact binomial test when b + c ≤ 10 000, else χ² with continuity
    correction; both are two-sided.
    """
    ya = np.asarray(y).astype(np.int64).ravel()
    a = _as_pred(pred_a)
    b_ = _as_pred(pred_b)
    if not (ya.shape == a.shape == b_.shape):
        raise ValueError("mcnemar needs equal lengths")
    ra, rb = a == ya, b_ == ya
    b = int(np.sum(ra & ~rb))
    c = int(np.sum(~ra & rb))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact")
    use_exact = n <= 10_000 if exact is None else exact
    if use_exact:
        p = min(1.0, 2.0 * _binom_cdf_half(min(b, c), n))
        return McNemarResult(b, c, float(min(b, c)), p, "exact")
    stat = (abs(b - c) - 1.0) ** 2 / n
    # survival function of χ² with 1 dof: erfc(sqrt(x / 2))
    return McNemarResult(b, c, stat, math.erfc(math.sqrt(stat / 2.0)), "chi2")


def _as_pred(p: ArrayLike) -> NDArray[np.int64]:
    arr = np.asarray(p).ravel()
    if arr.dtype.kind == "f":
        return (arr > 0.5).astype(np.int64)
    return arr.astype(np.int64)


@dataclass(frozen=True)
class BootstrapResult:
    """Observed difference A − B, its 95 % percentile interval, two-sided p, block count."""

    metric: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_blocks: int
    n_boot: int


def day_blocks(times_ms: ArrayLike) -> NDArray[np.int64]:
    """Block id per row: the UTC day of its timestamp, renumbered 0..D-1."""
    days = np.asarray(times_ms, dtype=np.int64) // DAY_MS
    _, inv = np.unique(days, return_inverse=True)
    return inv.astype(np.int64)


def _weighted_auc(
    ys: NDArray[np.int64], grp: NDArray[np.int64], n_grp: int, w: NDArray[np.float64]
) -> float:
    """AUC under row weights `w` (N,). Rows are pre-sorted by score; `grp` numbers ties.

    A positive beats every negative with a lower score and half-beats tied negatives
    (Mann–Whitney with midranks), each pair counted with the product of the weights.
    """
    neg_g = np.bincount(grp, weights=w * (ys == 0), minlength=n_grp)
    pos_g = np.bincount(grp, weights=w * (ys == 1), minlength=n_grp)
    below = np.cumsum(neg_g) - neg_g
    u = float(np.sum(pos_g * (below + 0.5 * neg_g)))
    tot = float(pos_g.sum() * neg_g.sum())
    return u / tot if tot > 0 else 0.5


def _auc_sorter(
    y: NDArray[np.int64], p: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    order = np.argsort(p, kind="mergesort").astype(np.int64)
    _, grp = np.unique(p[order], return_inverse=True)
    return order, grp.astype(np.int64), int(grp.max()) + 1


def _row_losses(y: NDArray[np.int64], p: NDArray[np.float64]) -> NDArray[np.float64]:
    pc = np.clip(p, EPS, 1.0 - EPS)
    yf = y.astype(np.float64)
    out: NDArray[np.float64] = -(yf * np.log(pc) + (1.0 - yf) * np.log(1.0 - pc))
    return out


def block_bootstrap(
    y: ArrayLike,
    p_a: ArrayLike,
    p_b: ArrayLike,
    blocks: ArrayLike,
    metric: str = "auc",
    n_boot: int = 1000,
    seed: int = 0,
) -> BootstrapResult:
    """Paired block bootstrap of metric(A) − metric(B) for metric "auc" or "log_loss".

    Blocks (e.g. `day_blocks(times)`) are resampled with replacement; the p-value is
    :func:`normal_p` (the observed difference over the bootstrap standard error).
    """
    return runs_bootstrap(y, [p_a], [p_b], blocks, metric, n_boot, seed)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Sorted ascending p_(1) ≤ … ≤ p_(m): adjusted p_(i) = max over j ≤ i of min(1, (m − j + 1)
    · p_(j)) (step-down, monotone). Rejecting where adjusted p < α controls the family-wise
    error rate at α for any dependence between the tests.
    """
    p = np.asarray(list(p_values), dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    if np.any((p < 0) | (p > 1) | np.isnan(p)):
        raise ValueError("p-values must lie in [0, 1]")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj_sorted = np.maximum.accumulate(scaled)
    out = np.empty(m)
    out[order] = adj_sorted
    return [float(v) for v in out]


@dataclass(frozen=True)
class GapResult:
    """Share of the teacher − scratch gap a student recovers, with a paired bootstrap CI.

    `ratio` = (student − scratch) / (teacher − scratch) on the observed rows (NaN when the
    teacher does not beat scratch there); the interval is the 2.5–97.5 % percentile of the
    ratio over resamples whose gap is positive (`n_valid` of `n_boot`).
    """

    ratio: float
    ci_low: float
    ci_high: float
    teacher_gap: float  # teacher − scratch on the observed rows
    student_gap: float  # student − scratch
    n_valid: int
    n_boot: int


Runs = Sequence[ArrayLike]  # one model's predictions, one array (N,) per seed


class _RunsAUC:
    """Mean AUC over a model's seeds under block weights: each seed's rows pre-sorted once."""

    def __init__(self, y: NDArray[np.int64], runs: Runs, blocks: NDArray[np.int64]) -> None:
        self.parts = []
        for p in _as_runs(y, runs):
            o, g, n = _auc_sorter(y, p)
            self.parts.append((y[o], g, n, blocks[o]))
        if not self.parts:
            raise ValueError("a model needs at least one run")
        self.one = np.ones(y.size)

    def __call__(self, w_block: NDArray[np.float64] | None = None) -> float:
        vals = [
            _weighted_auc(ys, g, n, self.one if w_block is None else w_block[b])
            for ys, g, n, b in self.parts
        ]
        return float(np.mean(vals))

    def per_seed(self, counts: NDArray[np.float64], chunk: int = 0) -> NDArray[np.float64]:
        """(S, B) each seed's AUC under each resample's block weights `counts` (B, D) (one
        :func:`_weighted_auc` per resample: bincount-based, faster than a chunked matrix
        form at these sizes; `chunk` is unused)."""
        return np.array(
            [[_weighted_auc(ys, g, n, c[b]) for c in counts] for ys, g, n, b in self.parts]
        )


def _as_runs(y: NDArray[np.int64], runs: Runs) -> list[NDArray[np.float64]]:
    """Each run as a flat float array, checked to hold one prediction per row of y."""
    out = [np.asarray(r, dtype=np.float64).ravel() for r in runs]
    if any(p.shape != y.shape for p in out):
        raise ValueError("every run needs one prediction per row")
    return out


def _prep(y: ArrayLike, blocks: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    ya = np.asarray(y).astype(np.int64).ravel()
    bl = np.asarray(blocks).astype(np.int64).ravel()
    if bl.shape != ya.shape:
        raise ValueError("blocks need one entry per row")
    return ya, bl


def _block_weights(n_blocks: int, n_boot: int, seed: int) -> NDArray[np.float64]:
    """(n_boot, D) how often each block is drawn in each resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_blocks, size=(n_boot, n_blocks))
    return np.stack([np.bincount(d, minlength=n_blocks) for d in draws]).astype(np.float64)


def _seed_draws(n_runs: int, n_boot: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """(n_boot, S) seed indices drawn with replacement (all zeros for a single run)."""
    if n_runs == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    return rng.integers(0, n_runs, size=(n_boot, n_runs)).astype(np.int64)


def _hier_mean(per_seed: NDArray[np.float64], draws: NDArray[np.int64]) -> NDArray[np.float64]:
    """(S, B) per-seed metric under each day resample, (B, S) seed draws → (B,) the mean over
    each resample's drawn seeds."""
    cols = np.arange(per_seed.shape[1])[:, None]  # (B, 1)
    out: NDArray[np.float64] = per_seed.T[cols, draws].mean(axis=1)
    return out


def normal_p(obs: float, boot: NDArray[np.float64]) -> float:
    """Two-sided p of H0: difference 0 from the bootstrap standard error (z = obs / sd):
    2·Φ(−|z|). Never floored by the resample count; 1 when both are 0."""
    sd = float(np.std(boot, ddof=1)) if boot.size > 1 else 0.0
    if sd <= 0.0:
        return 1.0 if obs == 0.0 else 0.0
    return float(math.erfc(abs(obs) / sd / math.sqrt(2.0)))


def runs_bootstrap(
    y: ArrayLike,
    runs_a: Runs,
    runs_b: Runs,
    blocks: ArrayLike,
    metric: str = "auc",
    n_boot: int = 1000,
    seed: int = 0,
    seeds_too: bool = True,
    cache: BootCache | None = None,
) -> BootstrapResult:
    """Paired hierarchical bootstrap of mean-over-seeds metric(A) − mean-over-seeds metric(B).

    Each model is scored as the average *single* model of its seeds (not as the average of
    its seeds' probabilities, which would be an ensemble). Metric "auc" or "log_loss".
    Two levels (issue 29: the intervals include training randomness): each resample draws
    whole blocks (days) with replacement, the same days for both models (paired), and, with
    `seeds_too`, each model's seeds with replacement, independently per model (a model's
    runs are exchangeable draws of its training randomness; a single run has no seed level).
    The interval is the 2.5–97.5 % percentile of the resampled differences; the p-value is
    :func:`normal_p` (z = observed / bootstrap standard error), never floored at 1/(B+1).
    """
    obs, boot, n_blocks = boot_samples(
        y, runs_a, runs_b, blocks, metric, n_boot, seed, seeds_too, cache
    )
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return BootstrapResult(metric, obs, float(lo), float(hi), normal_p(obs, boot), n_blocks, n_boot)


# per-model resampled metrics, reused across the comparisons of one analysis: key (id of
# the runs list, metric, n_boot, seed) -> (observed mean metric, (S, B) per-seed metric)
BootCache = dict[tuple[int, str, int, int], tuple[float, NDArray[np.float64]]]


def _model_matrix(
    ya: NDArray[np.int64],
    runs: Runs,
    bl: NDArray[np.int64],
    counts: NDArray[np.float64],
    metric: str,
    key: tuple[int, str, int, int],
    cache: BootCache | None,
) -> tuple[float, NDArray[np.float64]]:
    """(observed mean-over-seeds metric, (S, B) each seed's metric under each resample)."""
    if cache is not None and key in cache:
        return cache[key]
    if metric == "log_loss":
        n_blocks = counts.shape[1]
        block_n = np.bincount(bl, minlength=n_blocks).astype(np.float64)  # (D,)
        losses = [_row_losses(ya, p) for p in _as_runs(ya, runs)]  # S × (N,)
        sums = np.stack([np.bincount(bl, weights=r, minlength=n_blocks) for r in losses])
        out = (
            float(np.mean([r.mean() for r in losses])),
            (sums @ counts.T) / (counts @ block_n)[None, :],
        )
    elif metric == "auc":
        f = _RunsAUC(ya, runs, bl)
        out = (f(), f.per_seed(counts))
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'auc' or 'log_loss'")
    if cache is not None:
        cache[key] = out
    return out


def boot_samples(
    y: ArrayLike,
    runs_a: Runs,
    runs_b: Runs,
    blocks: ArrayLike,
    metric: str = "auc",
    n_boot: int = 1000,
    seed: int = 0,
    seeds_too: bool = True,
    cache: BootCache | None = None,
) -> tuple[float, NDArray[np.float64], int]:
    """(observed A − B, (n_boot,) resampled differences, block count) of
    :func:`runs_bootstrap`. `cache` (one per set of rows and blocks) reuses each model's
    resampled metrics across comparisons."""
    ya, bl = _prep(y, blocks)
    n_blocks = int(bl.max()) + 1
    counts = _block_weights(n_blocks, n_boot, seed)  # (B, D)
    rng = np.random.default_rng(seed + 1_000_003)
    oa, ma = _model_matrix(
        ya, runs_a, bl, counts, metric, (id(runs_a), metric, n_boot, seed), cache
    )
    ob, mb = _model_matrix(
        ya, runs_b, bl, counts, metric, (id(runs_b), metric, n_boot, seed), cache
    )
    if seeds_too:
        da, db = (_seed_draws(m.shape[0], n_boot, rng) for m in (ma, mb))
        boot = _hier_mean(ma, da) - _hier_mean(mb, db)
    else:
        boot = ma.mean(axis=0) - mb.mean(axis=0)
    return oa - ob, np.asarray(boot, dtype=np.float64), n_blocks


@dataclass(frozen=True)
class Equivalence:
    """TOST of |A − B| < margin: two one-sided tests at α; equivalent when the (1 − 2α)
    interval lies inside (−margin, +margin). Verdict: "better", "worse" (the 95 % interval
    excludes 0), "equivalent", or "inconclusive"."""

    diff: float
    ci90: tuple[float, float]
    ci95: tuple[float, float]
    margin: float
    p_tost: float  # max of the two one-sided p-values (normal approximation)
    verdict: str
    n_blocks: int
    n_boot: int


def equivalence(
    y: ArrayLike,
    runs_a: Runs,
    runs_b: Runs,
    blocks: ArrayLike,
    margin: float,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Equivalence:
    """Hierarchical (days × seeds) bootstrap TOST of ΔAUC = A − B against ±margin."""
    obs, boot, n_blocks = boot_samples(y, runs_a, runs_b, blocks, "auc", n_boot, seed)
    return tost(obs, boot, margin, n_blocks, alpha)


def tost(
    obs: float, boot: NDArray[np.float64], margin: float, n_blocks: int, alpha: float = 0.05
) -> Equivalence:
    """Two one-sided tests of an observed difference ``obs`` against ±margin from its
    (n_boot,) bootstrap resamples ``boot``: equivalent when the 1 − 2α interval lies inside
    the margin; better / worse when the 95 % interval excludes 0; else inconclusive."""
    n_boot = int(boot.size)
    lo90, hi90 = (float(v) for v in np.percentile(boot, [100 * alpha, 100 * (1 - alpha)]))
    lo95, hi95 = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    sd = float(np.std(boot, ddof=1)) if boot.size > 1 else 0.0
    if sd > 0:
        p_low = 0.5 * math.erfc((obs + margin) / sd / math.sqrt(2.0))  # H0: Δ ≤ −margin
        p_high = 0.5 * math.erfc((margin - obs) / sd / math.sqrt(2.0))  # H0: Δ ≥ +margin
        p = max(p_low, p_high)
    else:
        p = 0.0 if abs(obs) < margin else 1.0
    if -margin < lo90 and hi90 < margin:
        verdict = "equivalent"
    elif lo95 > 0:
        verdict = "better"
    elif hi95 < 0:
        verdict = "worse"
    else:
        verdict = "inconclusive"
    return Equivalence(obs, (lo90, hi90), (lo95, hi95), margin, p, verdict, n_blocks, n_boot)


@dataclass(frozen=True)
class AUCInterval:
    """One model's AUC and its 95 % day-block percentile interval."""

    auc: float
    ci_low: float
    ci_high: float
    n_blocks: int


def auc_interval(
    y: ArrayLike, p: ArrayLike, blocks: ArrayLike, n_boot: int = 1000, seed: int = 0
) -> AUCInterval:
    """One model's AUC with the block bootstrap's 2.5–97.5 % interval (the resamples
    :func:`runs_bootstrap` draws with the same `seed`, so its interval against a constant
    predictor is this one shifted by 0.5)."""
    ya, bl = _prep(y, blocks)
    n_blocks = int(bl.max()) + 1
    f = _RunsAUC(ya, [p], bl)
    boot = np.array([f(c) for c in _block_weights(n_blocks, n_boot, seed)])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return AUCInterval(f(), float(lo), float(hi), n_blocks)


def gap_recovered(
    y: ArrayLike,
    student: Runs,
    scratch: Runs,
    teacher: Runs,
    blocks: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    cache: BootCache | None = None,
) -> GapResult:
    """Gap recovered in mean-over-seeds AUC, with a paired hierarchical bootstrap (the same
    resampled days for all three models, so their correlation is kept; each model's seeds
    drawn with replacement, as :func:`runs_bootstrap`). Each argument is a list of runs (one
    (N,) array per seed)."""
    ya, bl = _prep(y, blocks)
    n_blocks = int(bl.max()) + 1
    counts = _block_weights(n_blocks, n_boot, seed)
    (s, ms), (c, mc), (t, mt) = (
        _model_matrix(ya, r, bl, counts, "auc", (id(r), "auc", n_boot, seed), cache)
        for r in (student, scratch, teacher)
    )
    ratio = (s - c) / (t - c) if t - c > 1e-12 else float("nan")
    rng = np.random.default_rng(seed + 1_000_003)
    bs, bc, bt = (_hier_mean(m, _seed_draws(m.shape[0], n_boot, rng)) for m in (ms, mc, mt))
    ok = bt - bc > 1e-12
    boots = ((bs - bc)[ok] / (bt - bc)[ok]).tolist()
    if boots:
        lo, hi = np.percentile(np.asarray(boots), [2.5, 97.5])
    else:
        lo = hi = float("nan")
    return GapResult(ratio, float(lo), float(hi), t - c, s - c, len(boots), n_boot)
