"""The report's training primitives for two-head networks: one fit, predictions per head,
ensemble targets.

The report trains many students per fold against the same frozen teacher, so teacher
targets are computed once (:class:`training.experiment.CachedTeacher` serves them by row).
An ensemble teacher's KD target is the members' averaged *tempered* probabilities:
the cached logits are T·ln(mean_k softmax(z_k / T)), so the Distiller's softmax(t / T)
gives back exactly that average. Feature targets come from one member (`feature_member`,
recorded in the report): averaging members' features would mix unrelated channel bases.

`fit` follows the teacher recipe of `python -m training train`: AdamW, a linear warm-up then
a per-step cosine decay to 5 % of the learning rate, dropout from the network spec, and
early stopping on validation log loss (the head-weighted sum) checked every `eval_every`
batches, the best check's weights kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from service.model_card import HEADS
from training.config import DistillConfig
from training.data import Split, batch_indices
from training.distill import Distiller
from training.experiment import CachedTeacher, network_outputs
from training.networks import NetSpec, build_network
from training.train import seed_everything

P = NDArray[np.float64]
Preds = dict[str, P]  # head name -> (M,) probability of class 1 (up / high volatility)


class FoldLike(Protocol):
    """What a fit needs: the splits and the training-row feature statistics."""

    @property
    def train(self) -> Split: ...
    @property
    def val(self) -> Split: ...
    @property
    def mean(self) -> NDArray[np.float64]: ...
    @property
    def std(self) -> NDArray[np.float64]: ...


@dataclass(frozen=True)
class FitSettings:
    """Optimiser, schedule and early-stopping settings of one training run."""

    epochs: int = 4
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4  # validation checks without improvement before stopping
    max_batches: int = 0  # per epoch; 0 = all
    eval_every: int = 0  # batches between validation checks; 0 = once per epoch
    warmup: float = 0.05  # share of all steps with a linear warm-up
    min_steps: int = 0  # small data: at least this many optimiser steps (more epochs)


@dataclass
class Fitted:
    """A trained network and its validation history."""

    net: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_check: int = 0
    seconds: float = 0.0


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` share of steps, then cosine to 5 %."""
    n_warm = max(1, int(total * warmup)) if warmup > 0 else 0
    if step < n_warm:
        return (step + 1) / n_warm
    frac = (step - n_warm) / max(1, total - n_warm - 1)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


@torch.no_grad()
def predict(net: nn.Module, x: NDArray[np.float32], batch: int = 2048) -> Preds:
    """Per-head class-1 probabilities (M,) of a two-head network for windows x (M, F, T)."""
    logits, _ = network_outputs(net, x, (), batch)  # (M, H, 2)
    prob = F.softmax(logits.double(), dim=-1)[..., 1].numpy()  # (M, H)
    return {h: prob[:, i].copy() for i, h in enumerate(HEADS)}


def average(preds: Sequence[Preds]) -> Preds:
    """Mean of several models' per-head probabilities (an ensemble's output)."""
    return {h: np.mean([p[h] for p in preds], axis=0) for h in preds[0]}


def val_log_loss(preds: Preds, y: NDArray[np.int64], weights: Sequence[float]) -> float:
    """Σ_h w_h · log loss of head h (y (M, H))."""
    total = 0.0
    for i, h in enumerate(HEADS):
        p = np.clip(preds[h], 1e-7, 1 - 1e-7)
        yy = y[:, i]
        total += weights[i] * float(-np.mean(yy * np.log(p) + (1 - yy) * np.log(1 - p)))
    return total


def ensemble_targets(
    members: Sequence[nn.Module],
    x: NDArray[np.float32],
    layers: Sequence[int],
    temperature: float,
    feature_member: int = 0,
) -> CachedTeacher:
    """Cached KD logits from the members' averaged tempered probabilities, features from one
    member. Logits (N, H, 2), features {layer: (N, C, T)}."""
    probs = []
    feats: dict[int, torch.Tensor] = {}
    for k, m in enumerate(members):
        lg, fs = network_outputs(m, x, layers if k == feature_member else ())
        probs.append(F.softmax(lg / temperature, dim=-1))
        if k == feature_member:
            feats = fs
    mean_p = torch.stack(probs).mean(dim=0).clamp_min(1e-12)
    logits = temperature * torch.log(mean_p)
    return CachedTeacher(members[feature_member], logits, feats)


def uniform_targets(member: nn.Module, n: int) -> CachedTeacher:
    """A teacher that knows nothing (equal logits): KD with it is the label-smoothing control."""
    return CachedTeacher(member, torch.zeros(n, len(HEADS), 2), {})


def fit(
    spec: NetSpec,
    data: FoldLike,
    cfg: DistillConfig,
    settings: FitSettings,
    seed: int,
    teacher: CachedTeacher | None = None,
) -> Fitted:
    """Train one two-head network (teacher or student) with early stopping on validation.

    `cfg.method == "scratch"` trains on the task losses alone (teachers are trained so).
    During a two-stage hint phase early stopping waits for the task phase.
    """
    seed_everything(seed)
    net = build_network(spec)
    net.norm.set_stats(data.mean, data.std)
    tr = data.train
    x_all, y_all, p_all = (torch.from_numpy(a) for a in (tr.x, tr.y, tr.pos))
    per_epoch = math.ceil(len(tr) / settings.batch_size)
    if settings.max_batches:
        per_epoch = min(per_epoch, settings.max_batches)
    # a slice of a few thousand windows gets as many steps as the budget says, not fewer
    # because it is small (early stopping still guards against overfitting)
    epochs = max(settings.epochs, math.ceil(settings.min_steps / max(1, per_epoch)))
    total = per_epoch * epochs
    distiller = Distiller(
        net,
        teacher if cfg.method != "scratch" else None,
        cfg,
        epochs=epochs,
        input_shape=(spec.n_features, spec.window),
        window=spec.window,
    )
    opt = torch.optim.AdamW(
        distiller.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    every = settings.eval_every or per_epoch
    weights = tuple(getattr(cfg, "head_weights", (1.0, 1.0)))
    out = Fitted(net)
    best, best_state, waited, step = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
    t0 = time.perf_counter()
    stop = False
    for epoch in range(epochs):
        distiller.train()
        for n_b, idx in enumerate(
            batch_indices(len(tr), settings.batch_size, seed=seed, epoch=epoch)
        ):
            if n_b >= per_epoch:
                break
            for group in opt.param_groups:
                group["lr"] = settings.lr * lr_factor(step, total, settings.warmup)
            rows = torch.from_numpy(idx)
            if teacher is not None:
                teacher.select(rows)
            loss = distiller(x_all[rows], y_all[rows], p_all[rows], epoch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            last_of_epoch = n_b == per_epoch - 1
            if step % every and not last_of_epoch:
                continue
            if teacher is not None:
                teacher.select(None)
            val = val_log_loss(predict(net, data.val.x), data.val.y, weights)
            distiller.train()
            out.history.append({"epoch": epoch + (n_b + 1) / per_epoch, "val_log_loss": val})
            if cfg.two_stage and cfg.method != "kd" and epoch < cfg.hint_epochs:
                continue  # the hint stage does not train the heads: do not stop on it
            if val < best - 1e-6:
                best, best_state, waited = val, copy.deepcopy(net.state_dict()), 0
                out.best_check = len(out.history) - 1
            else:
                waited += 1
                if waited >= settings.patience:
                    stop = True
                    break
        if stop:
            break
    if teacher is not None:
        teacher.select(None)
    net.load_state_dict(best_state)
    net.eval()
    out.seconds = time.perf_counter() - t0
    return out
