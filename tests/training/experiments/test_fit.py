"""The fit recipe: per-step schedule, validation every N batches, best-check restore, balance."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.config import DistillConfig
from training.data.dataset import Split
from training.distill.recipe import log_losses, lr_at_step, selection_score
from training.experiments.fit import FitSettings, FoldData, fit, predict_proba
from training.nets.networks import NetSpec

F_, T_ = 12, 32


def _split(n: int, seed: int, symbols: list[str] | None = None) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, F_, T_)).astype(np.float32)
    vol = (x[:, 5, -1] + 0.5 * rng.normal(0, 1, n) > 0).astype(np.int64)  # learnable
    direction = rng.integers(0, 2, n)  # pure noise: overfits
    sym = np.asarray(symbols * (n // len(symbols))) if symbols else None
    return Split(x, np.stack([direction, vol], 1), np.arange(n) * 40, np.arange(n), sym)


def _data(n_train: int = 256, symbols: list[str] | None = None) -> FoldData:
    tr = _split(n_train, 0, symbols)
    return FoldData(0, tr, _split(400, 1), _split(200, 2), np.zeros(F_), np.ones(F_), np.zeros(200))


SPEC = NetSpec("tcn", F_, T_, (8, 8))


def test_lr_schedule_warms_up_then_decays() -> None:
    lrs = [lr_at_step(1.0, s, 100, 0.1, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.05)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at_step(1.0, 50, 100, 0.1, "constant") == 1.0


def test_selection_score_per_head_or_summed() -> None:
    losses = {"direction": 0.7, "volatility": 0.6}
    assert selection_score(losses, "sum", (1.0, 2.0)) == pytest.approx(1.9)
    assert selection_score(losses, "volatility", (1.0, 1.0)) == 0.6
    with pytest.raises(ValueError):
        selection_score(losses, "bogus", (1.0, 1.0))


def test_checks_every_n_batches_and_the_best_check_is_restored() -> None:
    torch.set_num_threads(1)
    data = _data()
    settings = FitSettings(
        epochs=30, batch_size=32, lr=1e-2, weight_decay=0.0, patience=4, eval_every=3
    )
    res = fit(SPEC, data, DistillConfig(), settings, seed=0)
    scores = [h["val_log_loss"] for h in res.history]
    assert [int(h["step"]) for h in res.history[:3]] == [3, 6, 9]  # 8 batches/epoch, every 3
    best = int(np.argmin(scores))
    assert res.best_val == pytest.approx(scores[best])
    assert res.best_step == int(res.history[best]["step"])
    assert len(scores) == best + 1 + 4  # stopped after `patience` checks without improvement
    # the returned weights are the best check's: recomputing its validation score agrees
    again = log_losses(data.val.y, predict_proba(res.net, data.val.x))
    assert selection_score(again, "sum", (1.0, 1.0)) == pytest.approx(res.best_val, abs=1e-9)
    assert scores[-1] > res.best_val


def test_select_head_changes_what_is_kept() -> None:
    torch.set_num_threads(1)
    data = _data()
    settings = FitSettings(epochs=6, batch_size=32, lr=1e-2, patience=99, eval_every=4)
    res = fit(SPEC, data, DistillConfig(), settings, seed=0)
    vol = replace(settings, select_head="volatility")
    res_v = fit(SPEC, data, DistillConfig(), vol, seed=0)
    v = [h["val_volatility"] for h in res_v.history]
    assert res_v.best_val == pytest.approx(min(v))
    assert [h["val_log_loss"] for h in res.history] != v


def test_fit_is_reproducible_and_balanced_over_symbols() -> None:
    torch.set_num_threads(1)
    data = _data(300, symbols=["A", "A", "B"])  # A has twice B's windows
    settings = FitSettings(epochs=2, batch_size=25, eval_every=0, patience=9)
    a = fit(SPEC, data, DistillConfig(), settings, seed=1)
    b = fit(SPEC, data, DistillConfig(), settings, seed=1)
    for k, v in a.net.state_dict().items():
        torch.testing.assert_close(v, b.net.state_dict()[k], rtol=0, atol=0)
    assert len(a.history) == 2  # one check per epoch
    # balanced epochs: 100 of each symbol → 200 rows = 8 batches of 25, two epochs
    assert int(a.history[-1]["step"]) == 16
