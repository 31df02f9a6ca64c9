"""The evaluation harness's training primitives: fold splits, a cached teacher, one fit.

The report trains dozens of students per fold (methods × seeds) against the same frozen
teacher. Running the teacher on every batch would cost more than training the tiny student,
so :class:`CachedTeacher` serves the teacher's logits and matched features precomputed once
per fold; the harness tells it which rows the next batch holds. It also lets a distillation
run use *other* targets than the teacher's own forward pass on the student's input: cross-
fitted logits, a uniform "teacher" (the label-smoothing control), a teacher fed a different
timeframe (1-minute windows aligned to the 5-minute bar), or a channel subset.

The step itself is :class:`training.distill.distiller.Distiller`. Logits are (M, H, 2), one pair per
head (direction, volatility); :func:`predict_proba` returns a dict of (M,) probabilities keyed
by head, the same shape :class:`training.nets.ensemble.Ensemble` answers with.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from service import features as fx
from training.config import DistillConfig
from training.data.dataset import Pool, Split, batch_indices, make_split, norm_stats, symbol_codes
from training.data.walkforward import Fold
from training.distill.distiller import Distiller
from training.distill.recipe import (
    log_losses,
    lr_at_step,
    probabilities,
    seed_everything,
    selection_score,
)
from training.nets.ensemble import Ensemble
from training.nets.networks import NetSpec, build_network


@dataclass(frozen=True)
class FitSettings:
    """Optimiser, schedule and early-stopping settings of one training run.

    The recipe: AdamW (decoupled weight decay), a per-step learning rate with a linear
    warm-up over ``warmup`` of all steps then cosine decay to 5 % (or constant), validation
    every ``eval_every`` batches (0: once per epoch) on the validation log loss of
    ``select_head`` ("sum": head-weighted sum over both heads), ``patience`` checks without
    improvement stop the run (0: it runs its whole schedule), and the best check's weights
    are restored.
    """

    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 3  # validation checks without improvement before stopping; 0 = never
    max_batches: int = 0  # per epoch; 0 = all
    eval_every: int = 0  # batches between validation checks; 0 = once per epoch
    warmup: float = 0.05  # share of all steps with a linear learning-rate warm-up
    lr_schedule: str = "cosine"  # "cosine" (per step, to 5 %) or "constant"
    select_head: str = "sum"  # "sum", "direction" or "volatility"
    balance: bool = True  # equal windows per symbol in every epoch (pooled data)


@dataclass
class FitResult:
    """A trained network and its per-epoch history."""

    net: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one row per check
    best_epoch: int = 0
    best_step: int = 0  # optimiser steps done at the best check
    best_val: float = math.inf  # its selection score (validation log loss)
    seconds: float = 0.0


@dataclass(frozen=True)
class FoldData:
    """One fold's splits, with training-only normalisation statistics."""

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
    """Windows of a one-symbol fold (labels (N, H)); mean/std over the feature rows the
    training windows see only."""

    def split(rows: NDArray[np.int64]) -> Split:
        idx = ends[rows]
        return Split(
            x=fx.make_windows(feats, idx, window),
            y=labels[idx].astype(np.int64).reshape(idx.shape[0], -1),
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


def pool_fold_data(pool: Pool, fold: Fold) -> FoldData:
    """A fold of pool rows (e.g. from :func:`training.data.dataset.pooled_folds`) as FoldData:
    windows of every symbol, normalisation from the training rows of all symbols."""
    mean, std = norm_stats(pool, fold.train)
    return FoldData(
        fold.index,
        make_split(pool, fold.train),
        make_split(pool, fold.val),
        make_split(pool, fold.test),
        mean,
        std,
        pool.next_return(fold.test),
    )


# ------------------------------------------------------------------------------ teacher


@torch.no_grad()
def network_outputs(
    net: nn.Module, x: NDArray[np.float32], layers: Sequence[int] = (), batch: int = 1024
) -> tuple[Tensor, dict[int, Tensor]]:
    """Logits (M, H, 2) and the requested layers' features for inputs x (M, F, T), eval mode."""
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
        self.spec = getattr(teacher, "spec", None)  # what it reads (the distiller's probe)
        self.logits = logits  # (N, H, 2)
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


def cache_teacher(
    teacher: nn.Module, train: Split, layers: Sequence[int], batch: int = 1024
) -> CachedTeacher:
    """A :class:`CachedTeacher` over a fold's training windows: the teacher's (or an
    ensemble's) logits (N, H, 2) and the features of ``layers``, computed once."""
    logits, feats = network_outputs(teacher, train.x, layers, batch)
    return CachedTeacher(teacher, logits, feats)


# ---------------------------------------------------------------------------------- fit


@torch.no_grad()
def predict_proba(
    net: nn.Module, x: NDArray[np.float32], batch: int = 2048
) -> dict[str, NDArray[np.float64]]:
    """P(up) and P(high volatility), each (M,), of a network (eval mode) for x (M, F, T)."""
    logits, _ = network_outputs(net, x, (), batch)
    return probabilities(logits)


def fit(
    spec: NetSpec,
    data: FoldData,
    cfg: DistillConfig,
    settings: FitSettings,
    seed: int,
    teacher: CachedTeacher | nn.Module | None = None,
    init: nn.Module | None = None,
) -> FitResult:
    """Train one network (teacher or student) with early stopping on validation log loss.

    `cfg.method == "scratch"` trains on the task loss alone (teachers are trained this way).
    Validation runs every ``settings.eval_every`` batches (or once per epoch); the best
    check's weights are kept. During a two-stage hint phase early stopping waits for the
    task phase. ``teacher`` is a :class:`CachedTeacher` (rows selected per batch) or any
    module with ``forward_with_features`` (an :class:`~training.nets.ensemble.Ensemble`), run live.
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
    groups = symbol_codes(tr) if settings.balance else None
    cached = teacher if isinstance(teacher, CachedTeacher) else None

    def epoch_batches(epoch: int) -> Iterator[NDArray[np.int64]]:
        return batch_indices(len(tr), settings.batch_size, seed=seed, epoch=epoch, groups=groups)

    per_epoch = sum(1 for _ in epoch_batches(0))
    if settings.max_batches:
        per_epoch = min(per_epoch, settings.max_batches)
    total = max(per_epoch * settings.epochs, 1)
    every = settings.eval_every if settings.eval_every > 0 else per_epoch
    result = FitResult(net)
    best, best_state, waited = math.inf, copy.deepcopy(net.state_dict()), 0
    sums: dict[str, float] = {}
    n_sum, step, stop = 0, 0, False
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        distiller.train()
        for b, idx in enumerate(epoch_batches(epoch)):
            if settings.max_batches and b >= settings.max_batches:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at_step(
                    settings.lr, step, total, settings.warmup, settings.lr_schedule
                )
            rows = torch.from_numpy(idx)
            if cached is not None:
                cached.select(rows)
            out = distiller(x_all[rows], y_all[rows], p_all[rows], epoch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            for k, v in out.items():
                if k != "logits":
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_sum += 1
            step += 1
            last_of_epoch = b + 1 == per_epoch
            due = step % every == 0 or step == total  # the run's last step is always checked
            if not due and not (settings.eval_every <= 0 and last_of_epoch):
                continue
            if cached is not None:
                cached.select(None)
            losses = log_losses(data.val.y, predict_proba(net, data.val.x))
            score = selection_score(losses, settings.select_head, cfg.head_weights)
            distiller.train()
            row = {k: v / max(1, n_sum) for k, v in sums.items()}
            row.update(
                epoch=float(epoch),
                step=float(step),
                lr=float(opt.param_groups[0]["lr"]),
                val_log_loss=score,
                **{f"val_{name}": v for name, v in losses.items()},
            )
            result.history.append(row)
            sums, n_sum = {}, 0
            if cfg.two_stage and cfg.method != "kd" and epoch < cfg.hint_epochs:
                continue  # the classifier is not trained yet: nothing to select on
            if score < best - 1e-6:
                best, best_state, waited = score, copy.deepcopy(net.state_dict()), 0
                result.best_epoch, result.best_step = epoch, step
            else:
                waited += 1
                if settings.patience and waited >= settings.patience:
                    stop = True
                    break
        if cached is not None:
            cached.select(None)
        if stop:
            break
    net.load_state_dict(best_state)
    net.eval()
    result.best_val = best
    result.seconds = time.perf_counter() - t0
    return result


def train_ensemble(
    specs: NetSpec | Sequence[NetSpec],
    data: FoldData,
    settings: FitSettings,
    seeds: Sequence[int],
    *,
    cfg: DistillConfig | None = None,
    feature_member: int = 0,
) -> tuple[Ensemble, list[FitResult]]:
    """Train one member per seed (scratch, the teacher recipe) and wrap them.

    ``specs``: one spec for all members, or one per seed (e.g. both families).
    """
    spec_list = [specs] * len(seeds) if isinstance(specs, NetSpec) else list(specs)
    if len(spec_list) != len(seeds):
        raise ValueError(f"{len(spec_list)} member specs for {len(seeds)} seeds")
    dcfg = cfg or DistillConfig(method="scratch")
    results = [fit(s, data, dcfg, settings, seed) for s, seed in zip(spec_list, seeds, strict=True)]
    ens = Ensemble(
        [r.net for r in results],
        feature_member=feature_member,
        seeds=seeds,
        info={"best_steps": [r.best_step for r in results]},
    )
    return ens, results
