"""The standing linear control and the gradient-boosted member (issue 29)."""

from __future__ import annotations

import numpy as np
import pytest

from training.nets.baselines import (
    LinearBaseline,
    TreeBaseline,
    standardise_flat,
    window_summaries,
)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 8) windows; direction follows channel 0's last value, volatility channel 2's
    mean (a linear signal each), plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(n, 3, 8)).astype(np.float32)
    d = (x[:, 0, -1] - 2.0 + rng.normal(0, 2.0, n) > 0).astype(np.int64)
    v = (x[:, 2].mean(axis=1) - 2.0 + rng.normal(0, 1.0, n) > 0).astype(np.int64)
    return x, np.stack([d, v], axis=1)


def test_standardise_flat_and_summaries_shapes() -> None:
    x, _ = _data(50, 0)
    mean, std = np.full(3, 2.0), np.full(3, 3.0)
    z = standardise_flat(x, mean, std)
    assert z.shape == (50, 24)
    assert z[0, 7] == pytest.approx((x[0, 0, 7] - 2.0) / 3.0)  # channel-major flattening
    s = window_summaries(x, mean, std)
    assert s.shape == (50, 15)
    assert s[0, 0] == pytest.approx((x[0, 0, -1] - 2.0) / 3.0)  # last value of channel 0
    assert s[0, 3 + 1] == pytest.approx(((x[0, 1, -4:] - 2.0) / 3.0).mean(), rel=1e-6)


def test_linear_baseline_learns_and_chooses_c_on_validation() -> None:
    from training.scoring.metrics import roc_auc

    x, y = _data(3000, 1)
    xv, yv = _data(1000, 2)
    xt, yt = _data(1000, 3)
    lin = LinearBaseline(np.full(3, 2.0), np.full(3, 3.0), grid=(1e-4, 1e-2, 1.0))
    lin.fit(x, y, xv, yv)
    assert set(lin.chosen_c) == {"direction", "volatility"}
    assert all(c in (1e-4, 1e-2, 1.0) for c in lin.chosen_c.values())
    assert lin.params == 2 * (3 * 8 + 1)
    p = lin.predict(xt)
    assert roc_auc(yt[:, 0], p["direction"]) > 0.7
    assert roc_auc(yt[:, 1], p["volatility"]) > 0.8
    assert np.all((p["direction"] > 0) & (p["direction"] < 1))


def test_tree_baseline_early_stops_and_predicts() -> None:
    from training.scoring.metrics import roc_auc

    x, y = _data(2000, 4)
    xv, yv = _data(600, 5)
    xt, yt = _data(600, 6)
    trees = TreeBaseline(np.full(3, 2.0), np.full(3, 3.0), max_rounds=200, stop_rounds=10)
    trees.fit(x, y, xv, yv)
    assert 1 <= trees.rounds["volatility"] <= 200
    p = trees.predict(xt)
    assert roc_auc(yt[:, 1], p["volatility"]) > 0.75
