"""Pure helpers of the transfer experiments (the experiments live in training.exp_*).

- `aligned_rows`: for a 5-minute bar starting at s, the 1-minute window that ends at the
  same instant s + 5 min (the bar starting at s + 4 min) — the cross-timeframe setting.
- `channel_distance` / `select_channels`: teacher channels whose activation statistics are
  closest between a source and a target domain — d_c = |μ_s − μ_t| / √((σ_s² + σ_t²)/2) +
  |ln(σ_s / σ_t)| per channel, over batch and time.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# ------------------------------------------------------------------------ pure helpers


def channel_distance(src: NDArray[np.floating], tgt: NDArray[np.floating]) -> NDArray[np.float64]:
    """Per-channel distance between activation statistics of two domains.

    src (N, C[, T]) and tgt (M, C[, T]); statistics over batch (and time). Returns (C,):
    standardised mean gap plus absolute log ratio of standard deviations (0 = identical).
    """

    def stats(a: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        x = np.asarray(a, dtype=np.float64)
        x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])  # (N·T, C)
        return x.mean(axis=0), x.std(axis=0)

    ms, ss = stats(src)
    mt, st = stats(tgt)
    eps = 1e-8
    pooled = np.sqrt((ss**2 + st**2) / 2.0) + eps
    return np.abs(ms - mt) / pooled + np.abs(np.log((ss + eps) / (st + eps)))


def select_channels(distance: NDArray[np.float64], keep_fraction: float) -> NDArray[np.int64]:
    """Indices of the `keep_fraction` closest channels, ascending index order."""
    k = max(1, round(keep_fraction * distance.size))
    return np.sort(np.argsort(distance, kind="stable")[:k]).astype(np.int64)


def aligned_rows(
    student_start: NDArray[np.int64],
    student_step_ms: int,
    teacher_end_start: NDArray[np.int64],
    teacher_step_ms: int,
) -> NDArray[np.int64]:
    """For each student window, the teacher window ending at the same instant (−1: none).

    A student bar starting at s closes at s + student_step; the teacher bar that closes then
    starts at s + student_step − teacher_step.
    """
    want = student_start + student_step_ms - teacher_step_ms
    idx = np.searchsorted(teacher_end_start, want)
    idx = np.clip(idx, 0, teacher_end_start.size - 1)
    return np.where(teacher_end_start[idx] == want, idx, -1).astype(np.int64)
