"""The non-neural models every setting stands beside (issue 29): a logistic regression on the
flattened standardised window and gradient-boosted trees on per-channel window summaries.

Both are two-head (one model per head, direction and volatility, in ``HEADS`` order), trained
on the same training windows (M, F, T) as the networks, with the same per-feature statistics
(the training rows', as the networks' ``Normalize`` layer), and tuned on the validation split
only:

- :class:`LinearBaseline`: x ↦ σ(w·vec((x − μ)/σ) + b) per head, i.e. F·T + 1 parameters a
  head (770 for 12×32 and two heads); the inverse regularisation C is the grid value with the
  best validation AUC of that head (L2, lbfgs, warm-started along the grid);
- :class:`TreeBaseline`: LightGBM on :func:`window_summaries` (five statistics per channel),
  early-stopped on the validation log loss of that head.

scikit-learn and LightGBM are training dependencies (the ``train`` extra); nothing served
needs them (the served student is a network distilled from a teacher these may be part of).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.model.card import HEADS

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SUMMARIES = ("last", "last4_mean", "mean", "std", "last12_std")


def standardise_flat(x: F32, mean: F64, std: F64) -> F64:
    """(M, F, T) raw windows → (M, F·T) standardised with per-feature statistics."""
    s = np.maximum(np.asarray(std, dtype=np.float64), 1e-8)
    z = (x.astype(np.float64) - np.asarray(mean)[None, :, None]) / s[None, :, None]
    out: F64 = z.reshape(z.shape[0], -1)
    return out


def window_summaries(x: F32, mean: F64, std: F64) -> F64:
    """(M, F, T) raw windows → (M, 5·F): per standardised channel, the last value, the mean of
    the last 4, the window mean, the window std and the std of the last 12 (column order:
    statistic-major, as :data:`SUMMARIES`)."""
    s = np.maximum(np.asarray(std, dtype=np.float64), 1e-8)
    z = (x.astype(np.float64) - np.asarray(mean)[None, :, None]) / s[None, :, None]
    parts = [
        z[:, :, -1],
        z[:, :, -4:].mean(axis=2),
        z.mean(axis=2),
        z.std(axis=2),
        z[:, :, -12:].std(axis=2),
    ]
    out: F64 = np.concatenate(parts, axis=1)
    return out


def _auc(y: I64, p: F64) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < int(np.sum(y)) < y.size else 0.5


@dataclass
class LinearBaseline:
    """Two-head logistic regression on the flattened standardised window."""

    mean: F64
    std: F64
    grid: Sequence[float] = C_GRID
    models: list[Any] = field(default_factory=list)
    chosen_c: dict[str, float] = field(default_factory=dict)
    val_auc: dict[str, float] = field(default_factory=dict)

    def fit(self, x: F32, y: I64, x_val: F32, y_val: I64) -> LinearBaseline:
        """Per head: one fit per C of the grid (ascending, warm-started); keep the best
        validation AUC's."""
        from sklearn.linear_model import LogisticRegression

        xt = standardise_flat(x, self.mean, self.std)
        xv = standardise_flat(x_val, self.mean, self.std)
        self.models = []
        for i, h in enumerate(HEADS):
            lr = LogisticRegression(warm_start=True, max_iter=300, tol=1e-5)
            best: tuple[float, float, Any] = (-1.0, 0.0, None)
            for c in sorted(self.grid):
                lr.set_params(C=c)
                lr.fit(xt, y[:, i])
                auc = _auc(y_val[:, i], lr.predict_proba(xv)[:, 1])
                if auc > best[0]:
                    best = (auc, c, (lr.coef_.copy(), lr.intercept_.copy()))
            self.val_auc[h], self.chosen_c[h] = best[0], best[1]
            self.models.append(best[2])
        return self

    def predict(self, x: F32) -> dict[str, F64]:
        """Per-head class-1 probabilities (M,)."""
        xs = standardise_flat(x, self.mean, self.std)
        out = {}
        for h, (coef, icpt) in zip(HEADS, self.models, strict=True):
            z = xs @ coef.ravel() + float(icpt[0])  # (M,)
            out[h] = 1.0 / (1.0 + np.exp(-z))
        return out

    @property
    def params(self) -> int:
        return sum(int(c.size) + 1 for c, _ in self.models)


@dataclass
class TreeBaseline:
    """Two-head LightGBM on window summaries, early-stopped on validation."""

    mean: F64
    std: F64
    seed: int = 0
    num_leaves: int = 31
    learning_rate: float = 0.05
    max_rounds: int = 1000
    stop_rounds: int = 50
    models: list[Any] = field(default_factory=list)
    val_auc: dict[str, float] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)

    def fit(self, x: F32, y: I64, x_val: F32, y_val: I64) -> TreeBaseline:
        import lightgbm as lgb

        st = window_summaries(x, self.mean, self.std)
        sv = window_summaries(x_val, self.mean, self.std)
        self.models = []
        for i, h in enumerate(HEADS):
            clf = lgb.LGBMClassifier(
                n_estimators=self.max_rounds,
                learning_rate=self.learning_rate,
                num_leaves=self.num_leaves,
                min_child_samples=100,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                random_state=self.seed,
                n_jobs=1,
                deterministic=True,
                force_row_wise=True,
                verbose=-1,
            )
            clf.fit(
                st,
                y[:, i],
                eval_X=(sv,),
                eval_y=(y_val[:, i],),
                eval_metric="binary_logloss",
                callbacks=[lgb.early_stopping(self.stop_rounds, verbose=False)],
            )
            self.models.append(clf)
            self.rounds[h] = int(clf.best_iteration_ or self.max_rounds)
            pv = np.asarray(clf.predict_proba(sv), dtype=np.float64)  # (M, 2)
            self.val_auc[h] = _auc(y_val[:, i], pv[:, 1])
        return self

    def predict(self, x: F32) -> dict[str, F64]:
        s = window_summaries(x, self.mean, self.std)
        return {
            h: np.asarray(m.predict_proba(s), dtype=np.float64)[:, 1]
            for h, m in zip(HEADS, self.models, strict=True)
        }
