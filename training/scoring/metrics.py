"""Classification metrics per head (direction, volatility), pure numpy.

The single-head functions take `y` (N,) labels in {0, 1} and `p` (N,) probabilities of
class 1; :func:`head_reports` and :func:`per_symbol_reports` apply them per head.
Probabilities are clipped to [1e-7, 1 - 1e-7] inside log loss only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from service.model.card import HEADS

EPS = 1e-7


def _yp(y: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    ya = np.asarray(y).astype(np.int64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"labels and probabilities differ in length: {ya.size} vs {pa.size}")
    if ya.size == 0:
        raise ValueError("metrics need at least one row")
    return ya, pa


def accuracy(y: ArrayLike, p: ArrayLike, threshold: float = 0.5) -> float:
    """Share of rows where (p > threshold) equals the label."""
    ya, pa = _yp(y, p)
    return float(np.mean((pa > threshold).astype(np.int64) == ya))


def balanced_accuracy(y: ArrayLike, p: ArrayLike, threshold: float = 0.5) -> float:
    """Mean of the per-class recalls (a class absent from y is skipped)."""
    ya, pa = _yp(y, p)
    pred = (pa > threshold).astype(np.int64)
    recalls = [float(np.mean(pred[ya == c] == c)) for c in (0, 1) if np.any(ya == c)]
    return float(np.mean(recalls))


def mcc(y: ArrayLike, p: ArrayLike, threshold: float = 0.5) -> float:
    """Matthews correlation coefficient; 0 when any confusion-matrix margin is empty."""
    ya, pa = _yp(y, p)
    pred = (pa > threshold).astype(np.int64)
    tp = float(np.sum((pred == 1) & (ya == 1)))
    tn = float(np.sum((pred == 0) & (ya == 0)))
    fp = float(np.sum((pred == 1) & (ya == 0)))
    fn = float(np.sum((pred == 0) & (ya == 1)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0.0 else float((tp * tn - fp * fn) / den)


def log_loss(y: ArrayLike, p: ArrayLike) -> float:
    """Mean binary cross-entropy in nats."""
    ya, pa = _yp(y, p)
    pc = np.clip(pa, EPS, 1.0 - EPS)
    return float(-np.mean(ya * np.log(pc) + (1 - ya) * np.log(1.0 - pc)))


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of the probability against the 0/1 label."""
    ya, pa = _yp(y, p)
    return float(np.mean((pa - ya) ** 2))


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic with midranks for ties.

    Returns 0.5 when only one class is present (the AUC is undefined there).
    """
    ya, pa = _yp(y, p)
    n1 = int(np.sum(ya == 1))
    n0 = ya.size - n1
    if n1 == 0 or n0 == 0:
        return 0.5
    order = np.argsort(pa, kind="mergesort")
    sorted_p = pa[order]
    ranks = np.empty(pa.size, dtype=np.float64)
    # midranks: equal scores share the mean of their 1-based positions
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    mid = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mid, counts)
    u = float(np.sum(ranks[ya == 1])) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def calibration_bins(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> dict[str, list[float]]:
    """Equal-width reliability bins: per bin the mean probability, observed rate and count.

    Empty bins are dropped. Also used for the expected calibration error.
    """
    ya, pa = _yp(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(pa, edges[1:-1]), 0, n_bins - 1)
    mean_p: list[float] = []
    rate: list[float] = []
    count: list[float] = []
    for b in range(n_bins):
        m = idx == b
        if np.any(m):
            mean_p.append(float(np.mean(pa[m])))
            rate.append(float(np.mean(ya[m])))
            count.append(float(np.sum(m)))
    return {"mean_p": mean_p, "rate": rate, "count": count}


def expected_calibration_error(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Count-weighted mean |observed rate − mean probability| over equal-width bins."""
    bins = calibration_bins(y, p, n_bins)
    c = np.asarray(bins["count"])
    gap = np.abs(np.asarray(bins["rate"]) - np.asarray(bins["mean_p"]))
    return float(np.sum(c * gap) / np.sum(c))


def top_confidence(y: ArrayLike, p: ArrayLike, share: float = 0.10) -> tuple[float, float]:
    """Accuracy on the `share` most confident rows (largest |p − 0.5|) and their coverage.

    Coverage is the fraction of rows actually used (ties at the cut-off are all included,
    so it can exceed `share` slightly).
    """
    ya, pa = _yp(y, p)
    conf = np.abs(pa - 0.5)
    k = max(1, int(np.ceil(share * ya.size)))
    cut = np.sort(conf)[::-1][k - 1]
    m = conf >= cut
    acc = float(np.mean((pa[m] > 0.5).astype(np.int64) == ya[m]))
    return acc, float(np.mean(m))


def agreement(p_a: ArrayLike, p_b: ArrayLike) -> float:
    """Share of rows where two models predict the same direction (p > 0.5)."""
    a = np.asarray(p_a, dtype=np.float64).ravel()
    b = np.asarray(p_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError("agreement needs equal lengths")
    return float(np.mean((a > 0.5) == (b > 0.5)))


@dataclass(frozen=True)
class ClassificationReport:
    """Every direction metric for one model on one set of rows."""

    n: int
    accuracy: float
    balanced_accuracy: float
    mcc: float
    log_loss: float
    brier: float
    auc: float
    ece: float
    top10_accuracy: float
    top10_coverage: float
    up_rate: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON / tables."""
        return {k: float(v) for k, v in asdict(self).items()}


def classification_report(y: ArrayLike, p: ArrayLike) -> ClassificationReport:
    """All metrics above for labels `y` and up-probabilities `p`."""
    ya, pa = _yp(y, p)
    top_acc, top_cov = top_confidence(ya, pa)
    return ClassificationReport(
        n=int(ya.size),
        accuracy=accuracy(ya, pa),
        balanced_accuracy=balanced_accuracy(ya, pa),
        mcc=mcc(ya, pa),
        log_loss=log_loss(ya, pa),
        brier=brier(ya, pa),
        auc=roc_auc(ya, pa),
        ece=expected_calibration_error(ya, pa),
        top10_accuracy=top_acc,
        top10_coverage=top_cov,
        up_rate=float(np.mean(ya)),
    )


# ------------------------------------------------------------------------- two heads


def head_reports(
    y: ArrayLike,
    probs: Mapping[str, ArrayLike],
    teacher_probs: Mapping[str, ArrayLike] | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric per head: labels y (N, H) in head order, probabilities keyed by head.

    With ``teacher_probs``, each head also gets ``agreement_with_teacher`` (same side of 0.5)
    and ``mean_abs_diff_teacher`` (mean |p − p_teacher|).
    """
    ya = np.asarray(y)
    if ya.ndim != 2 or ya.shape[1] != len(HEADS):
        raise ValueError(f"head_reports needs labels (N, {len(HEADS)}), got {ya.shape}")
    out: dict[str, dict[str, float]] = {}
    for h, name in enumerate(HEADS):
        rep = classification_report(ya[:, h], probs[name]).as_dict()
        if teacher_probs is not None:
            p = np.asarray(probs[name], dtype=np.float64)
            t = np.asarray(teacher_probs[name], dtype=np.float64)
            rep["agreement_with_teacher"] = agreement(p, t)
            rep["mean_abs_diff_teacher"] = float(np.mean(np.abs(p - t)))
        out[name] = rep
    return out


def per_symbol_reports(
    y: ArrayLike,
    probs: Mapping[str, ArrayLike],
    symbols: ArrayLike,
    teacher_probs: Mapping[str, ArrayLike] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`head_reports` for each symbol's rows: {symbol: {head: metrics}}."""
    sym = np.asarray(symbols)
    ya = np.asarray(y)
    out = {}
    for s in sorted(set(sym.tolist())):
        m = sym == s
        sub = {k: np.asarray(v)[m] for k, v in probs.items()}
        tsub = (
            None
            if teacher_probs is None
            else {k: np.asarray(v)[m] for k, v in teacher_probs.items()}
        )
        out[str(s)] = head_reports(ya[m], sub, tsub)
    return out
