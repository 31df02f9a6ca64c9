"""What every experiment module shares: the run environment and the two kinds of fit
(ensemble teacher members, a plan of students), each one step of the progress bar."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from service import features as fx
from training.distill.distiller import default_pairs
from training.experiments.config import ReportConfig
from training.experiments.fit import CachedTeacher
from training.experiments.harness import (
    FoldLike,
    Preds,
    average,
    diverse_targets,
    ensemble_targets,
    predict,
)
from training.experiments.runner import run_fits
from training.nets.baselines import LinearBaseline, TreeBaseline
from training.nets.networks import NetSpec, build_network, count_parameters, default_spec
from training.progress import Progress

LINEAR = "logistic regression"  # the standing linear control of every setting
TREES = "lightgbm"
DIVERSE = "diverse teacher"
# the linear student: the mlp family without hidden layers is a linear map of the flattened
# normalised window to both heads' logits (F·T·4 + 4 parameters); it exposes no features
LINEAR_STUDENT = "linear student (kd)"

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


def linear_spec(env: Env) -> NetSpec:
    """The linear student: flattened normalised window → both heads' logits."""
    return NetSpec("mlp", env.s_spec.n_features, env.s_spec.window, ())


def linear_control(env: Env, data: FoldLike, label: str) -> LinearBaseline:
    """The logistic regression on the flattened standardised window, trained on a student's
    own training windows (C chosen on its validation windows)."""
    t0 = time.perf_counter()
    lin = LinearBaseline(data.mean, data.std).fit(
        data.train.x, data.train.y, data.val.x, data.val.y
    )
    env.log(f"{label} logistic regression: C {lin.chosen_c} ({time.perf_counter() - t0:.0f} s)")
    return lin


@dataclass
class Diverse:
    """A teacher with diverse members (issue 29): the logistic regression, LightGBM on window
    summaries and the TCN ensemble, each a third of the averaged probabilities."""

    linear: LinearBaseline
    trees: TreeBaseline
    members: list[nn.Module]

    def predict(self, x: np.ndarray) -> Preds:
        nets = average([predict(m, x) for m in self.members])
        return average([self.linear.predict(x), self.trees.predict(x), nets])

    def targets(self, env: Env, x: np.ndarray) -> CachedTeacher:
        others = [self.linear.predict(x), self.trees.predict(x)]
        cfg = env.cfg
        fm = min(cfg.feature_member, len(self.members) - 1)
        return diverse_targets(self.members, others, x, env.layers, cfg.distill.temperature, fm)


def diverse_teacher(
    env: Env, data: FoldLike, members: list[nn.Module], label: str, linear: LinearBaseline | None
) -> Diverse:
    """Fit the non-network members on the teacher's training windows (early stopping and C on
    its validation windows) and join them to the TCN members."""
    lin = linear or linear_control(env, data, label)
    t0 = time.perf_counter()
    trees = TreeBaseline(data.mean, data.std, seed=env.cfg.members[0]).fit(
        data.train.x, data.train.y, data.val.x, data.val.y
    )
    env.log(f"{label} lightgbm: rounds {trees.rounds} ({time.perf_counter() - t0:.0f} s)")
    return Diverse(lin, trees, members)
