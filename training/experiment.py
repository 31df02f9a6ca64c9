"""The evaluation harness's training primitives: fold splits, a cached teacher, one fit.

The report trains dozens of students per fold (methods × seeds) against the same frozen
teacher. Running the teacher on every batch would cost more than training the tiny student,
so :class:`CachedTeacher` serves the teacher's logits and matched features precomputed once
per fold; the harness tells it which rows the next batch holds. It also lets a distillation
run use *other* targets than the teacher's own forward pass on the student's input: cross-
fitted logits, a uniform "teacher" (the label-smoothing control), a teacher fed a different
timeframe (1-minute windows aligned to the 5-minute bar), or a channel subset.

The step itself is helper code's :class:`training.distill.Distiller`, unchanged.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from service import features as fx
from training.config import DistillConfig
from training.data import Split, batch_indices
from training.distill import Distiller
from training.networks import NetSpec, build_network
from training.train import lr_at, seed_everything
from training.walkforward import Fold


@dataclass(frozen=True)
class FitSettings:
    """Optimiser and early-stopping settings of one training run."""

    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 3  # epochs without validation improvement before stopping
    max_batches: int = 0  # per epoch; 0 = all


@dataclass
class FitResult:
    """A trained network and its per-epoch history."""

    net: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class FoldData:
    """One walk-forward fold's splits, with training-only normalisation statistics."""

    index: int
    train: Split
    val: Split
    test: Split
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    test_next_ret: NDArray[np.float64]  # (M,) return of the bar after each test window


def make_fold_data(
    feats: NDArray[np.float64],
    labels: NDArray[np.float64],
    pos: NDArray[np.int64],
    start_ms: NDArray[np.int64],
    close: NDArray[np.float64],
    ends: NDArray[np.int64],
    fold: Fold,
    window: int = fx.WINDOW,
) -> FoldData:
    """Windows of a fold; mean/std over the feature rows the training windows see only."""

    def split(rows: NDArray[np.int64]) -> Split:
        idx = ends[rows]
        return Split(
            x=fx.make_windows(feats, idx, window),
            y=labels[idx].astype(np.int64),
            pos=pos[idx],
            start_ms=start_ms[idx].astype(np.int64),
        )

    tr_ends = ends[fold.train]
    rows = np.unique((tr_ends[:, None] - np.arange(window)[None, :]).ravel())
    test_ends = ends[fold.test]
    nxt = close[np.minimum(test_ends + 1, close.shape[0] - 1)] / close[test_ends] - 1.0
    return FoldData(
        fold.index,
        split(fold.train),
        split(fold.val),
        split(fold.test),
        feats[rows].mean(axis=0),
        feats[rows].std(axis=0),
        nxt.astype(np.float64),
    )


# ------------------------------------------------------------------------------ teacher


@torch.no_grad()
def network_outputs(
    net: nn.Module, x: NDArray[np.float32], layers: Sequence[int] = (), batch: int = 1024
) -> tuple[Tensor, dict[int, Tensor]]:
    """Logits (M, 2) and the requested layers' features for inputs x (M, F, T), eval mode."""
    net.eval()
    logits: list[Tensor] = []
    feats: dict[int, list[Tensor]] = {k: [] for k in layers}
    for lo in range(0, x.shape[0], batch):
        lg, fs = net.forward_with_features(torch.from_numpy(x[lo : lo + batch]))  # type: ignore[operator]
        logits.append(lg)
        for k in layers:
            feats[k].append(fs[k])
    return torch.cat(logits), {k: torch.cat(v) for k, v in feats.items()}


class CachedTeacher(nn.Module):
    """A frozen teacher whose outputs for the current batch come from a cache.

    `select(rows)` names the cached rows of the next batch; without a selection (e.g. the
    Distiller probing feature shapes) the real teacher runs on the given input, with the same
    channel subsets applied, so shapes always agree with the cache.
    """

    def __init__(
        self,
        teacher: nn.Module,
        logits: Tensor,
        feats: dict[int, Tensor],
        channels: dict[int, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.logits = logits  # (N, 2)
        self.channels = channels or {}
        self.feats = {k: self._subset(k, v) for k, v in feats.items()}  # (N, C_k, T)
        self._rows: Tensor | None = None

    def _subset(self, layer: int, f: Tensor) -> Tensor:
        ch = self.channels.get(layer)
        return f if ch is None else f.index_select(1, ch)

    def select(self, rows: Tensor | None) -> None:
        """Rows of the cache that the next forward call stands for (None: compute)."""
        self._rows = rows

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if self._rows is None:
            lg, fs = self.teacher.forward_with_features(x)  # type: ignore[operator]
            return lg, [self._subset(k, f) for k, f in enumerate(fs)]
        r = self._rows
        n_layers = 1 + max(self.feats, default=-1)
        empty = self.logits.new_zeros(0)
        out = [
            self.feats[k].index_select(0, r) if k in self.feats else empty for k in range(n_layers)
        ]
        return self.logits.index_select(0, r), out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]


# ---------------------------------------------------------------------------------- fit


@torch.no_grad()
def predict_proba(net: nn.Module, x: NDArray[np.float32], batch: int = 2048) -> NDArray[np.float64]:
    """Up-probabilities (M,) of a network (eval mode) for windows x (M, F, T)."""
    logits, _ = network_outputs(net, x, (), batch)
    return F.softmax(logits, dim=1)[:, 1].double().numpy()


def _val_log_loss(net: nn.Module, split: Split) -> float:
    p = np.clip(predict_proba(net, split.x), 1e-7, 1 - 1e-7)
    y = split.y
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit(
    spec: NetSpec,
    data: FoldData,
    cfg: DistillConfig,
    settings: FitSettings,
    seed: int,
    teacher: CachedTeacher | None = None,
    init: nn.Module | None = None,
) -> FitResult:
    """Train one network (teacher or student) with early stopping on validation log loss.

    `cfg.method == "scratch"` trains on the task loss alone (teachers are trained this way).
    During a two-stage hint phase early stopping waits for the task phase.
    """
    seed_everything(seed)
    net: nn.Module
    if init is not None:
        net = copy.deepcopy(init)
    else:
        fresh = build_network(spec)
        fresh.norm.set_stats(data.mean, data.std)
        net = fresh
    distiller = Distiller(
        net,
        teacher if cfg.method != "scratch" else None,
        cfg,
        epochs=settings.epochs,
        input_shape=(spec.n_features, spec.window),
        window=spec.window,
    )
    opt = torch.optim.AdamW(
        distiller.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    tr = data.train
    x_all = torch.from_numpy(tr.x)
    y_all = torch.from_numpy(tr.y)
    p_all = torch.from_numpy(tr.pos)
    result = FitResult(net)
    best, best_state, waited = float("inf"), copy.deepcopy(net.state_dict()), 0
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        for group in opt.param_groups:  # the same cosine decay as `python -m training distill`
            group["lr"] = lr_at(settings.lr, epoch, settings.epochs)
        distiller.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for idx in batch_indices(len(tr), settings.batch_size, seed=seed, epoch=epoch):
            if settings.max_batches and n_batches >= settings.max_batches:
                break
            rows = torch.from_numpy(idx)
            if teacher is not None:
                teacher.select(rows)
            out = distiller(x_all[rows], y_all[rows], p_all[rows], epoch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            for k, v in out.items():
                if k != "logits":
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
        if teacher is not None:
            teacher.select(None)
        val = _val_log_loss(net, data.val)
        row = {k: v / max(1, n_batches) for k, v in sums.items()}
        row.update(epoch=float(epoch), val_log_loss=val)
        result.history.append(row)
        in_hint = cfg.two_stage and cfg.method != "kd" and epoch < cfg.hint_epochs
        if in_hint:
            continue
        if val < best - 1e-6:
            best, best_state, waited, result.best_epoch = (
                val,
                copy.deepcopy(net.state_dict()),
                0,
                epoch,
            )
        else:
            waited += 1
            if waited >= settings.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    result.seconds = time.perf_counter() - t0
    return result
