"""The report's training primitives for two-head networks: one fit, predictions per head,
ensemble targets.

The report trains many students per fold against the same frozen teacher, so teacher
targets are computed once (:class:`training.experiments.fit.CachedTeacher` serves them by row).
An ensemble teacher's KD target is the members' averaged *tempered* probabilities:
the cached logits are T·ln(mean_k softmax(z_k / T)), so the Distiller's softmax(t / T)
gives back exactly that average. Feature targets come from one member (`feature_member`,
recorded in the report): averaging members' features would mix unrelated channel bases.

`fit` is the project's one training recipe (:func:`training.experiments.fit.fit`), fed the
report's settings; dropout comes from the network spec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from service.model.card import HEADS
from training.config import DistillConfig
from training.data.dataset import Split
from training.experiments.fit import CachedTeacher, FitResult, FoldData, network_outputs
from training.experiments.fit import FitSettings as RecipeSettings
from training.experiments.fit import fit as experiment_fit
from training.nets.networks import NetSpec

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
    patience: int = 4  # validation checks without improvement before stopping; 0 = never
    max_batches: int = 0  # per epoch; 0 = all
    eval_every: int = 0  # batches between validation checks; 0 = once per epoch
    warmup: float = 0.05  # share of all steps with a linear warm-up
    min_steps: int = 0  # small data: at least this many optimiser steps (more epochs)


@torch.no_grad()
def predict(net: nn.Module, x: NDArray[np.float32], batch: int = 2048) -> Preds:
    """Per-head class-1 probabilities (M,) of a two-head network for windows x (M, F, T)."""
    logits, _ = network_outputs(net, x, (), batch)  # (M, H, 2)
    prob = F.softmax(logits.double(), dim=-1)[..., 1].numpy()  # (M, H)
    return {h: prob[:, i].copy() for i, h in enumerate(HEADS)}


def average(preds: Sequence[Preds]) -> Preds:
    """Mean of several models' per-head probabilities (an ensemble's output)."""
    return {h: np.mean([p[h] for p in preds], axis=0) for h in preds[0]}


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


def tempered_pair(p: P, temperature: float) -> torch.Tensor:
    """(M,) class-1 probabilities of a non-network model → (M, 2) tempered probabilities
    softmax([0, logit(p)] / T), as a network's softmax(z / T) would give."""
    pc = np.clip(p, 1e-6, 1 - 1e-6)
    hi = torch.sigmoid(torch.as_tensor(np.log(pc / (1 - pc)) / temperature, dtype=torch.float32))
    return torch.stack([1 - hi, hi], dim=-1)


def diverse_targets(
    members: Sequence[nn.Module],
    others: Sequence[Preds],
    x: NDArray[np.float32],
    layers: Sequence[int],
    temperature: float,
    feature_member: int = 0,
) -> CachedTeacher:
    """KD targets of a diverse teacher (issue 29): the network members' ensemble counts as
    one part and each other model (its probabilities on the same rows x) as another, all
    parts weighing equally: mean tempered probability = (mean_k softmax(z_k/T) + Σ_j q_j)
    / (1 + J). Features, as for :func:`ensemble_targets`, from one network member."""
    base = ensemble_targets(members, x, layers, temperature, feature_member)
    parts = [F.softmax(base.logits / temperature, dim=-1)]  # (N, H, 2)
    for o in others:
        parts.append(torch.stack([tempered_pair(o[h], temperature) for h in HEADS], dim=1))
    mean_p = torch.stack(parts).mean(dim=0).clamp_min(1e-12)
    return CachedTeacher(members[feature_member], temperature * torch.log(mean_p), base.feats)


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
) -> FitResult:
    """Train one two-head network (teacher or student) with the project's recipe
    (:func:`training.experiments.fit.fit`: AdamW, warm-up + cosine, early stopping on the
    head-weighted validation log loss every `eval_every` batches, best check kept).

    `cfg.method == "scratch"` trains on the task losses alone (teachers are trained so).
    `settings.min_steps` raises the epoch count of a small training set so it still gets
    that many optimiser steps (early stopping still guards against overfitting).
    """
    per_epoch = math.ceil(len(data.train) / settings.batch_size)
    if settings.max_batches:
        per_epoch = min(per_epoch, settings.max_batches)
    epochs = max(settings.epochs, math.ceil(settings.min_steps / max(1, per_epoch)))
    recipe = RecipeSettings(
        epochs=epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        patience=settings.patience,
        max_batches=settings.max_batches,
        eval_every=settings.eval_every,
        warmup=settings.warmup,
        lr_schedule="cosine",
        select_head="sum",
        balance=False,  # the report's splits hold equal windows per symbol already
    )
    fold = FoldData(0, data.train, data.val, data.val, data.mean, data.std, np.zeros(0))
    return experiment_fit(spec, fold, cfg, recipe, seed, teacher)
