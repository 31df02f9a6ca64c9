"""Live scores and the no-skill reference against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.monitor.live_metrics import accuracy, auc, brier, log_loss, no_skill, score
from training.scoring import metrics as metrics_eval

Y = [1.0, 0.0, 1.0, 0.0]
P = [0.8, 0.4, 0.6, 0.7]


def test_figures_by_hand() -> None:
    assert accuracy(Y, P) == 0.75  # predictions 1, 0, 1, 1
    assert log_loss(Y, P) == pytest.approx(
        -(math.log(0.8) + math.log(0.6) + math.log(0.6) + math.log(0.3)) / 4
    )
    assert brier(Y, P) == pytest.approx((0.04 + 0.16 + 0.16 + 0.49) / 4)
    # pairs (pos, neg): (.8,.4) (.8,.7) (.6,.4) won, (.6,.7) lost
    assert auc(Y, P) == pytest.approx(0.75)


def test_auc_ties_and_one_class() -> None:
    assert auc([1.0, 0.0], [0.5, 0.5]) == 0.5
    assert auc([1.0, 0.0, 1.0], [0.3, 0.3, 0.9]) == pytest.approx(0.75)  # one tie, one win
    assert auc([1.0, 1.0], [0.2, 0.9]) == 0.5


def test_no_skill_closed_forms() -> None:
    ns = no_skill([1.0, 0.0, 1.0, 1.0])
    assert ns["base_rate"] == 0.75 and ns["accuracy"] == 0.75 and ns["auc"] == 0.5
    assert ns["log_loss"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert ns["brier"] == pytest.approx(0.1875)
    # the constant prediction scored by the general functions gives the same figures
    const = score([1.0, 0.0, 1.0, 1.0], [0.75] * 4)
    assert const["log_loss"] == pytest.approx(ns["log_loss"])
    assert const["brier"] == pytest.approx(ns["brier"])


def test_agrees_with_training_metrics_on_random_data() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(500) > 0.4).astype(float)
    p = np.round(rng.random(500), 2)  # rounding makes ties
    s = score(list(y), list(p))
    assert s["accuracy"] == pytest.approx(metrics_eval.accuracy(y, p))
    assert s["log_loss"] == pytest.approx(metrics_eval.log_loss(y, p))
    assert s["brier"] == pytest.approx(metrics_eval.brier(y, p))
    assert s["auc"] == pytest.approx(metrics_eval.roc_auc(y, p))


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        score([], [])
    with pytest.raises(ValueError):
        score([1.0], [0.5, 0.5])
