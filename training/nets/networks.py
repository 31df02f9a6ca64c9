"""Teacher and student networks: the `tcn` and `mlp` families (DESIGN section 4).

Every network takes raw features (B, F, T), normalises them with per-feature statistics of the
training split (a layer, so it travels into ONNX) and exposes
``forward_with_features(x) -> (logits (B, H, 2), [f_1 ... f_L])`` with one feature per block:
(B, C, T) for `tcn`, (B, C) for `mlp`. The logits hold one (B, 2) pair per head, in the order
of ``HEADS`` (direction, volatility): ``logits[:, h]`` is head h's (down/low, up/high) pair.
Both heads read the same trunk summary through one linear layer (B, H·2) viewed as (B, H, 2).

TCN padding is causal (left-only): the feature at time τ then depends on bars ≤ τ only, so a
time step means "the state after bar τ" in teacher and student alike (attention maps over
time compare like with like), and the last step sees the whole receptive field, which the
head reads. Shapes stay static (T in → T out), which ONNX export needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.model.card import HEADS

N_CLASSES = 2  # per head: down / up, low / high volatility
N_HEADS = len(HEADS)  # direction, volatility
Stats = Sequence[float] | Tensor | npt.NDArray[np.float64]


@dataclass(frozen=True)
class NetSpec:
    """Everything needed to rebuild a network (stored in checkpoints and model cards)."""

    family: str  # "tcn" | "mlp"
    n_features: int
    window: int
    channels: tuple[int, ...]  # tcn: channels per block; mlp: hidden widths
    kernel_size: int = 3
    dilations: tuple[int, ...] = ()  # tcn only; default 1, 2, 4, ...
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["dilations"] = list(self.resolved_dilations())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetSpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        d["dilations"] = tuple(d.get("dilations", ()))
        return cls(**d)

    def resolved_dilations(self) -> tuple[int, ...]:
        """Dilation per block (doubling by default: receptive field ≈ T for 4 blocks)."""
        if self.family != "tcn":
            return ()
        if self.dilations:
            if len(self.dilations) != len(self.channels):
                raise ValueError("dilations must have one entry per TCN block")
            return self.dilations
        return tuple(2**i for i in range(len(self.channels)))


class Normalize(nn.Module):
    """(x − mean) / std per feature, with statistics from the training split as buffers."""

    mean: Tensor
    std: Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, n_features, 1))  # (1, F, 1)
        self.register_buffer("std", torch.ones(1, n_features, 1))  # (1, F, 1)

    def set_stats(self, mean: Stats, std: Stats) -> None:
        """Install training-split statistics; tiny stds are clamped so no feature explodes."""
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1).clamp_min(1e-8)
        self.mean.copy_(m)
        self.std.copy_(s)

    def forward(self, x: Tensor) -> Tensor:  # (B, F, T) -> (B, F, T)
        return (x - self.mean) / self.std


class CausalConvBlock(nn.Module):
    """Residual block: two dilated causal convs with BatchNorm + ReLU (Bai et al. TCN)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation  # left padding keeps length T and causality
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout)
        self.skip: nn.Module = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, T) -> (B, C_out, T)
        h = F.relu(self.bn1(self.conv1(F.pad(x, (self.pad, 0)))))
        h = self.drop(h)
        h = self.bn2(self.conv2(F.pad(h, (self.pad, 0))))
        return F.relu(h + self.skip(x))


class TCN(nn.Module):
    """Stack of causal residual blocks; head reads [last step, time mean] of the last block."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.norm = Normalize(spec.n_features)
        blocks = []
        c_in = spec.n_features
        for c, d in zip(spec.channels, spec.resolved_dilations(), strict=True):
            blocks.append(CausalConvBlock(c_in, c, spec.kernel_size, d, spec.dropout))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(2 * c_in, N_HEADS * N_CLASSES)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, F, T) → logits (B, H, 2) and each block's output (B, C_l, T)."""
        h = self.norm(x)
        feats: list[Tensor] = []
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        summary = torch.cat([h[:, :, -1], h.mean(dim=2)], dim=1)  # (B, 2C)
        return _heads(self.head(self.drop(summary))), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]


class MLP(nn.Module):
    """The seed's baseline: flattened window → hidden layers (ReLU) → 2 logits."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.norm = Normalize(spec.n_features)
        layers = []
        width = spec.n_features * spec.window
        for c in spec.channels:
            layers.append(nn.Linear(width, c))
            width = c
        self.layers = nn.ModuleList(layers)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(width, N_HEADS * N_CLASSES)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, F, T) → logits (B, H, 2) and each hidden activation (B, C_l)."""
        h = self.norm(x).flatten(1)  # (B, F·T)
        feats: list[Tensor] = []
        for layer in self.layers:
            h = F.relu(layer(h))
            feats.append(h)
            h = self.drop(h)
        return _heads(self.head(h)), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]


Network = TCN | MLP


def _heads(flat: Tensor) -> Tensor:
    """(B, H·2) head output → (B, H, 2) logits, one pair per head."""
    return flat.reshape(flat.shape[0], N_HEADS, N_CLASSES)


def build_network(spec: NetSpec) -> Network:
    """Instantiate the network a spec describes."""
    if spec.family == "tcn":
        return TCN(spec)
    if spec.family == "mlp":
        return MLP(spec)
    raise ValueError(f"unknown network family {spec.family!r}; use 'tcn' or 'mlp'")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count (buffers such as normalisation stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def feature_shapes(model: nn.Module, n_features: int, window: int) -> list[tuple[int, ...]]:
    """Per-sample shapes of every exposed feature, e.g. [(16, 32), (16, 32)] or [(32,), (16,)]."""
    was_training = model.training
    model.eval()
    _, feats = model.forward_with_features(torch.zeros(2, n_features, window))  # type: ignore[operator]
    model.train(was_training)
    return [tuple(f.shape[1:]) for f in feats]


def default_spec(family: str, role: str, n_features: int, window: int) -> NetSpec:
    """The default teacher/student architectures of each family."""
    table: dict[tuple[str, str], tuple[tuple[int, ...], float]] = {
        ("tcn", "teacher"): ((64, 64, 64, 64), 0.1),
        ("tcn", "student"): ((16, 16), 0.0),
        ("mlp", "teacher"): ((128, 64, 32), 0.1),
        ("mlp", "student"): ((32, 16), 0.0),
    }
    try:
        channels, dropout = table[(family, role)]
    except KeyError:
        raise ValueError(f"no default {role!r} for family {family!r}") from None
    return NetSpec(family, n_features, window, channels, dropout=dropout)
