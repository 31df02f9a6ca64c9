"""Direction metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from training.scoring.metrics import (
    accuracy,
    agreement,
    balanced_accuracy,
    brier,
    calibration_bins,
    classification_report,
    expected_calibration_error,
    log_loss,
    mcc,
    roc_auc,
    top_confidence,
)

Y = np.array([1, 0, 1, 1, 0, 0, 1, 0])
P = np.array([0.9, 0.2, 0.6, 0.4, 0.55, 0.1, 0.7, 0.45])
# predictions (p > .5):  1 0 1 0 1 0 1 0 → right on rows 0,1,2,5,6,7 → 6/8


def test_accuracy_balanced_mcc_by_hand() -> None:
    assert accuracy(Y, P) == pytest.approx(0.75)
    # recall(1) = 3/4, recall(0) = 3/4
    assert balanced_accuracy(Y, P) == pytest.approx(0.75)
    # tp 3, tn 3, fp 1, fn 1 → (9 - 1) / sqrt(4·4·4·4) = 0.5
    assert mcc(Y, P) == pytest.approx(0.5)
    assert mcc([1, 1, 0], [0.9, 0.8, 0.7]) == 0.0  # a margin is empty


def test_log_loss_and_brier_by_hand() -> None:
    y = np.array([1, 0])
    p = np.array([0.8, 0.4])
    assert log_loss(y, p) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert brier(y, p) == pytest.approx((0.04 + 0.16) / 2)
    assert np.isfinite(log_loss([1], [0.0]))


def test_auc_by_hand_with_ties() -> None:
    # positives 0.9, 0.6, 0.4, 0.7; negatives 0.2, 0.55, 0.1, 0.45 → pairs won:
    # 0.9:4, 0.6:4, 0.4:2, 0.7:4 → 14/16
    assert roc_auc(Y, P) == pytest.approx(14 / 16)
    # one tie counted as half
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.8, 0.1]) == pytest.approx((1.5 + 2) / 4)
    assert roc_auc([1, 1], [0.2, 0.3]) == 0.5


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # plenty of ties
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, p) == pytest.approx(pairs / (pos.size * neg.size))


def test_calibration_and_top_confidence() -> None:
    bins = calibration_bins(Y, P, n_bins=2)
    assert bins["count"] == [4.0, 4.0]
    assert bins["rate"] == [0.25, 0.75]
    assert expected_calibration_error(Y, P, n_bins=2) >= 0.0
    acc, cov = top_confidence(Y, P, share=0.25)  # the 2 most confident: 0.9 (right), 0.1 (right)
    assert (acc, cov) == (1.0, 0.25)
    assert agreement(P, 1 - P) == 0.0


def test_report_bundles_everything() -> None:
    rep = classification_report(Y, P).as_dict()
    assert rep["n"] == 8
    assert rep["accuracy"] == pytest.approx(0.75)
    assert set(rep) >= {"auc", "log_loss", "brier", "mcc", "top10_accuracy", "top10_coverage"}
    with pytest.raises(ValueError):
        accuracy([1, 0], [0.5])


def test_leakage_alarm_fires_on_implausible_scores() -> None:
    from training.scoring.evaluate import LeakageAlarm, leakage_check

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    leakage_check("coin", y, rng.random(2000))  # a coin flip passes
    peeking = np.where(y == 1, 0.6, 0.4)  # a model that saw the label
    with pytest.raises(LeakageAlarm, match="audit the split"):
        leakage_check("peek", y, peeking)
    # AUC alone can trip it even at chance-level accuracy
    slightly = np.clip(0.5 + 0.02 * (y - 0.5) + 0.001 * rng.standard_normal(2000), 0, 1)
    with pytest.raises(LeakageAlarm):
        leakage_check("auc-only", y, 0.9 + 0.05 * slightly)


def test_baselines() -> None:
    from training.scoring.evaluate import RET_1, last_return_baseline, majority_baseline

    y_tr = np.array([1, 1, 0, 1])
    assert majority_baseline(y_tr, 3).tolist() == [0.75] * 3
    x_tr = np.zeros((4, 12, 32), dtype=np.float32)
    x_tr[:, RET_1, -1] = [0.01, 0.02, -0.01, -0.02]  # ups after up bars, 1/2 after down bars
    x_te = np.zeros((2, 12, 32), dtype=np.float32)
    x_te[:, RET_1, -1] = [0.5, -0.5]
    assert last_return_baseline(x_tr, y_tr, x_te).tolist() == [1.0, 0.5]
