"""The training recipe's pure parts, shared by `training.distill.train` and
`training.experiments.fit`.

Seeding, the per-step learning-rate schedule (linear warm-up, then cosine to 5 % or
constant), per-head probabilities and log losses, and the early-stopping score.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from service.model.card import HEADS


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU kernels used here are deterministic)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def probabilities(logits: Tensor) -> dict[str, NDArray[np.float64]]:
    """Per-head class-1 probabilities (M,) from logits (M, H, 2), keyed by head name."""
    p = F.softmax(logits.double(), dim=-1)[..., 1]  # (M, H)
    return {name: p[:, h].numpy() for h, name in enumerate(HEADS)}


def log_losses(y: NDArray[np.int64], probs: dict[str, NDArray[np.float64]]) -> dict[str, float]:
    """Binary log loss per head: labels y (M, H), probabilities keyed by head."""
    out = {}
    for h, name in enumerate(HEADS):
        p = np.clip(probs[name], 1e-7, 1 - 1e-7)
        yh = y[:, h]
        out[name] = float(-np.mean(yh * np.log(p) + (1 - yh) * np.log(1 - p)))
    return out


def selection_score(losses: dict[str, float], select_head: str, weights: Sequence[float]) -> float:
    """The number early stopping minimises: one head's log loss or the head-weighted sum."""
    if select_head == "sum":
        return float(sum(w * losses[name] for name, w in zip(HEADS, weights, strict=True)))
    if select_head not in HEADS:
        raise ValueError(f"select_head {select_head!r}: use 'sum' or one of {HEADS}")
    return losses[select_head]


def lr_at_step(base: float, step: int, total: int, warmup: float, schedule: str) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: linear warm-up over the first
    ``warmup`` share of steps, then cosine decay to 5 % of ``base`` (or constant)."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return base * (step + 1) / n_warm
    if schedule == "constant":
        return base
    frac = (step - n_warm) / max(total - n_warm - 1, 1)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0))))
