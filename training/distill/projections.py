"""Projection heads r(s): student feature → teacher feature shape (dropped at export).

Shapes are per sample: (C, T) for conv features, (C,) for MLP features.

* ``linear``: W·s + b over channels (per time step on (B, C, T));
* ``mlp``: W2·σ(W1·s + b1) + b2 (per time step on (B, C, T)), hidden width = teacher's;
* ``conv1x1``: Conv1d(C_s, C_t, 1), (B, C, T) only;
* ``pool_linear``: adaptive average pool over time to one step, then linear → (B, C_t).

``align_pair`` then reconciles the time axes that remain (see its docstring), so any head can
be chosen per layer pair, across families too.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from training.distill.losses import pool_time

Shape = tuple[int, ...]


class ChannelLinear(nn.Module):
    """Linear map over the channel axis of (B, C) or (B, C, T)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # (B, C, T) -> (B, T, C) -> linear -> (B, C', T)
            out: Tensor = self.fc(x.transpose(1, 2)).transpose(1, 2)
            return out
        flat: Tensor = self.fc(x)  # (B, C) -> (B, C')
        return flat


class ChannelMLP(nn.Module):
    """W2·σ(W1·x + b1) + b2 over the channel axis (σ = ReLU)."""

    def __init__(self, c_in: int, c_out: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ChannelLinear(c_in, hidden)
        self.fc2 = ChannelLinear(hidden, c_out)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(F.relu(self.fc1(x)))
        return out


class Conv1x1(nn.Module):
    """Pointwise Conv1d: (B, C_s, T) → (B, C_t, T)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError("conv1x1 projection needs (B, C, T) student features; use 'linear'")
        out: Tensor = self.conv(x)
        return out


class PoolLinear(nn.Module):
    """Adaptive average pool over time (to 1), then linear: (B, C_s[, T]) → (B, C_t)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = F.adaptive_avg_pool1d(x, 1).squeeze(-1)  # (B, C_s)
        out: Tensor = self.fc(x)
        return out


def default_kind(s_shape: Shape, t_shape: Shape) -> str:
    """Natural head for a pair: conv1x1 between conv features, linear between vectors,
    pool_linear across families."""
    if len(s_shape) == 2 and len(t_shape) == 2:
        return "conv1x1"
    if len(s_shape) == 1 and len(t_shape) == 1:
        return "linear"
    return "pool_linear"


def build_projection(kind: str, s_shape: Shape, t_shape: Shape) -> nn.Module:
    """Head mapping a student feature of ``s_shape`` to the teacher's channel count."""
    if kind == "auto":
        kind = default_kind(s_shape, t_shape)
    c_s, c_t = s_shape[0], t_shape[0]
    if kind == "linear":
        return ChannelLinear(c_s, c_t)
    if kind == "mlp":
        return ChannelMLP(c_s, c_t, hidden=c_t)
    if kind == "conv1x1":
        if len(s_shape) != 2:
            raise ValueError(f"conv1x1 needs a (C, T) student feature, got {s_shape}; use 'linear'")
        return Conv1x1(c_s, c_t)
    if kind == "pool_linear":
        return PoolLinear(c_s, c_t)
    raise ValueError(f"unknown projection {kind!r}; use linear, mlp, conv1x1 or pool_linear")


class EmbedHead(nn.Module):
    """CRD embedding: pool over time if any, linear to ``dim``, L2-normalise → (B, dim)."""

    def __init__(self, c_in: int, dim: int) -> None:
        super().__init__()
        self.proj = PoolLinear(c_in, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x), p=2, dim=1)


def align_pair(t_feat: Tensor, s_out: Tensor) -> tuple[Tensor, Tensor]:
    """Make a teacher feature and a projected student feature the same shape.

    (B, C, T) against (B, C): the conv feature is averaged over time. Two time lengths: the
    longer is adaptive-average-pooled to the shorter (as attention transfer does).
    """
    if t_feat.dim() == 3 and s_out.dim() == 2:
        return t_feat.mean(dim=2), s_out
    if t_feat.dim() == 2 and s_out.dim() == 3:
        return t_feat, s_out.mean(dim=2)
    if t_feat.dim() == 3 and t_feat.shape[-1] != s_out.shape[-1]:
        length = min(t_feat.shape[-1], s_out.shape[-1])
        return pool_time(t_feat, length), pool_time(s_out, length)
    return t_feat, s_out
