"""What every experiment module shares: the run environment and the two kinds of fit
(ensemble teacher members, a plan of students), each one step of the progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from service import features as fx
from training.distill.distiller import default_pairs
from training.experiments.config import ReportConfig
from training.experiments.fit import CachedTeacher
from training.experiments.harness import FoldLike, Preds, ensemble_targets, predict
from training.experiments.runner import run_fits
from training.nets.networks import NetSpec, build_network, count_parameters, default_spec
from training.progress import Progress

# (report row name, distillation method, targets or None for scratch)
StudentPlan = list[tuple[str, str, CachedTeacher | None]]


@dataclass(frozen=True)
class Env:
    """Config, progress bar and the two architectures, passed to every experiment."""

    cfg: ReportConfig
    progress: Progress
    t_spec: NetSpec
    s_spec: NetSpec

    @classmethod
    def make(cls, cfg: ReportConfig, progress: Progress) -> Env:
        t = default_spec(cfg.family, "teacher", fx.N_FEATURES, fx.WINDOW)
        s = default_spec(cfg.family, "student", fx.N_FEATURES, fx.WINDOW)
        return cls(cfg, progress, replace(t, dropout=cfg.teacher_dropout), s)

    def log(self, msg: str) -> None:
        self.progress.log(msg)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(teacher layer, student layer) pairs: configured, else the three-level heuristic."""
        got = [tuple(p) for p in self.cfg.distill.pairs] or default_pairs(
            len(self.t_spec.channels), len(self.s_spec.channels)
        )
        return [(int(a), int(b)) for a, b in got]

    @property
    def layers(self) -> list[int]:
        return sorted({t for t, _ in self.pairs})

    def params(self, spec: NetSpec) -> int:
        return count_parameters(build_network(spec))


def with_fits(env: Env, **changes: int) -> Env:
    """The same environment with every fit, teacher and student alike, changed the same way
    (e.g. `min_steps=120`: at least 120 optimiser steps)."""
    cfg = env.cfg
    return replace(
        env,
        cfg=replace(
            cfg,
            student_fit=replace(cfg.student_fit, **changes),
            teacher_fit=replace(cfg.teacher_fit, **changes),
        ),
    )


def train_members(env: Env, data: FoldLike, label: str, seeds: Sequence[int]) -> list[nn.Module]:
    """The ensemble teacher's members: one scratch-trained teacher per seed."""
    cfg = env.cfg
    out = []
    jobs = [(replace(cfg.distill, method="scratch"), cfg.teacher_fit, seed, None) for seed in seeds]
    for seed, res in zip(seeds, run_fits(data, env.t_spec, jobs, cfg.threads), strict=True):
        env.progress.step(f"{label} teacher seed {seed}", res.seconds)
        out.append(res.net)
    return out


def teacher_targets(env: Env, members: Sequence[nn.Module], x: np.ndarray) -> CachedTeacher:
    """KD and feature targets of an ensemble (or a single member) on training windows x."""
    return ensemble_targets(
        members,
        x,
        env.layers,
        env.cfg.distill.temperature,
        min(env.cfg.feature_member, len(members) - 1),
    )


def train_students(
    env: Env,
    data: FoldLike,
    test_x: np.ndarray,
    plan: StudentPlan,
    seeds: Sequence[int],
    label: str,
    spec: NetSpec | None = None,
) -> tuple[dict[str, list[Preds]], dict[str, nn.Module]]:
    """Every student of the plan × seed: test predictions per row name, seed-0 networks."""
    cfg = env.cfg
    spec = spec or env.s_spec
    preds: dict[str, list[Preds]] = {}
    nets: dict[str, nn.Module] = {}
    runs = [(name, seed) for name, _, _ in plan for seed in seeds]
    jobs = [
        (replace(cfg.distill, method=method), cfg.student_fit, seed, tgt)
        for _, method, tgt in plan
        for seed in seeds
    ]
    # where the runs execute: training.experiments.runner (results in this order)
    for (name, seed), res in zip(runs, run_fits(data, spec, jobs, cfg.threads), strict=True):
        preds.setdefault(name, []).append(predict(res.net, test_x))
        if seed == seeds[0]:
            nets[name] = res.net
        env.progress.step(f"{label} {name} seed {seed}", res.seconds)
    return preds, nets


def majority(y_train: np.ndarray, n: int) -> Preds:
    """The constant predictor: each head's training positive rate."""
    from service.model.card import HEADS

    return {h: np.full(n, float(np.mean(y_train[:, i]))) for i, h in enumerate(HEADS)}
