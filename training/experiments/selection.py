"""Item 7: the committed student, picked by the rule fixed in [select] before the run.

On setting A's last fold, one student of every pre-registered size is trained (method
`select.method`, distilling from the pooled ensemble, seed = the first student seed) and
scored on the *validation* split, as is the ensemble teacher. The candidates may read more of
the fold's training and validation windows than A's runs (`select.train_stride`,
`select.val_stride`: A keeps every 6th window to fit 120 runs in the budget, but every window
carries its own label; a few fits can afford them all, and a rule with a tolerance of 0.005
AUC needs more than A's 2.9k validation windows, whose AUC has a standard error of ~0.01);
the test rows are A's. With `select.whole_schedule` every selection fit runs its whole
schedule and keeps its best validation check (A's patience, 3 checks of 30 batches, is ~1.4 of
A's epochs but under a quarter of an epoch of every window, and stops fits mid-schedule while
the validation loss is still falling). When the selection's fits differ from A's in either
way, the ensemble teacher is trained again as the candidates are (same windows, member seeds
and recipe): it is the candidates' KD teacher, the rule's reference, and the committed
student's teacher in its card and in runs/train/teacher/. The committed size is the
smallest (fewest parameters) whose validation AUC on `select.head` is at least the
teacher's minus `select.tolerance`; if none holds, the largest size is taken and the report
says so. With `report.linear_student` (issue 29) the linear student (the flattened window →
both heads, 1,540 parameters, distilled the same way) is a candidate beside the TCN sizes.
Test bars are never read by the rule; the chosen student's test metrics are reported
afterwards (the last fold's pooled test bars, AUC with a day-block interval).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from service.model.card import HEADS
from training.data.series import PooledFold, pooled_fold
from training.experiments.common import (
    Env,
    linear_spec,
    teacher_targets,
    train_members,
    with_fits,
)
from training.experiments.config import ReportConfig
from training.experiments.harness import Preds, average, fit, predict
from training.experiments.pooled import PooledOutcome
from training.nets.networks import NetSpec, count_parameters
from training.scoring.metrics import roc_auc
from training.scoring.stats import AUCInterval, auc_interval, day_blocks


def reads_more(cfg: ReportConfig) -> bool:
    """Whether the selection reads other windows than A's runs."""
    pc, sel = cfg.pooled, cfg.select
    strides = (sel.train_stride or pc.train_stride, sel.val_stride or pc.val_stride)
    return strides != (pc.train_stride, pc.val_stride)


def own_teacher(cfg: ReportConfig) -> bool:
    """Whether the selection's fits differ from A's, so that it trains its own teacher."""
    return reads_more(cfg) or cfg.select.whole_schedule


def n_runs(cfg: ReportConfig) -> int:
    if not cfg.pooled.enabled:
        return 0
    n_sizes = len(cfg.select.sizes) + int(cfg.linear_student)
    return n_sizes + (len(cfg.members) if own_teacher(cfg) else 0)


@dataclass(frozen=True)
class Candidate:
    """One pre-registered size's validation (and, after the choice, test) scores."""

    channels: tuple[int, ...]  # () with family "mlp": the linear student
    params: int
    val_auc: dict[str, float]
    test: Preds
    best_step: int  # the optimiser step of the validation check kept
    steps: int  # optimiser steps the fit ran
    family: str = "tcn"


@dataclass
class Selection:
    """The rule's inputs and outcome."""

    teacher_val_auc: dict[str, float]
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int = -1
    held: bool = False
    net: nn.Module | None = None
    spec: NetSpec | None = None
    teacher_test: Preds = field(default_factory=dict)
    data: PooledFold | None = None  # the fold the candidates trained on
    members: list[nn.Module] = field(default_factory=list)  # the candidates' ensemble teacher
    # the chosen student's test AUC per head with its day-block 95 % interval (after the rule)
    chosen_test: dict[str, AUCInterval] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "teacher_val_auc": self.teacher_val_auc,
            "candidates": [
                {
                    "family": c.family,
                    "channels": list(c.channels),
                    "params": c.params,
                    "val_auc": c.val_auc,
                    "best_step": c.best_step,
                    "steps": c.steps,
                }
                for c in self.candidates
            ],
            "chosen": list(self.candidates[self.chosen].channels) if self.candidates else None,
            "chosen_family": self.candidates[self.chosen].family if self.candidates else None,
            "held": self.held,
            "train_windows": len(self.data.train) if self.data is not None else 0,
            "val_windows": len(self.data.val) if self.data is not None else 0,
            "chosen_test_auc": {
                h: {"auc": r.auc, "ci_low": r.ci_low, "ci_high": r.ci_high, "days": r.n_blocks}
                for h, r in self.chosen_test.items()
            },
        }


def choose(
    val_aucs: list[float], params: list[int], teacher_auc: float, tolerance: float
) -> tuple[int, bool]:
    """Index of the smallest candidate with AUC ≥ teacher − tolerance (else the largest)."""
    order = sorted(range(len(params)), key=lambda i: params[i])
    for i in order:
        if val_aucs[i] >= teacher_auc - tolerance:
            return i, True
    return order[-1], False


def selection_fold(cfg: ReportConfig, a: PooledOutcome) -> PooledFold:
    """A's last fold with the strides of `[select]` (0: A's); the test windows are A's."""
    pc, sel = cfg.pooled, cfg.select
    if not reads_more(cfg):
        return a.last
    train_stride = sel.train_stride or pc.train_stride
    val_stride = sel.val_stride or pc.val_stride
    pf = pooled_fold(a.series, a.last_fold, train_stride, val_stride=val_stride)
    if not np.array_equal(pf.test.start_ms, a.last.test.start_ms):
        raise AssertionError("the selection fold must keep A's test rows")
    return pf


def run(env: Env, a: PooledOutcome) -> Selection:
    if env.cfg.select.whole_schedule:
        env = with_fits(env, patience=0)  # no early stop: the whole schedule
    cfg, sel = env.cfg, env.cfg.select
    data = selection_fold(cfg, a)
    env.log(
        f"select: {len(data.train)} training / {len(data.val)} validation windows (A's runs: "
        f"{len(a.last.train)} / {len(a.last.val)})"
    )
    val_y = data.val.y
    # the rule's reference must be trained as the candidates are: a teacher on 1/6 of their
    # windows is weaker than all of them on validation, and every size would "hold" it
    members = train_members(env, data, "select", cfg.members) if own_teacher(cfg) else a.members
    t_val = average([predict(m, data.val.x) for m in members])
    sel_out = Selection({h: roc_auc(val_y[:, i], t_val[h]) for i, h in enumerate(HEADS)})
    sel_out.teacher_test = average([predict(m, data.test.x) for m in members])
    sel_out.data = data
    sel_out.members = members
    targets = teacher_targets(env, members, data.train.x)
    nets: list[nn.Module] = []
    specs: list[NetSpec] = []
    specs_asked = [replace(env.s_spec, channels=tuple(c), dilations=()) for c in sel.sizes]
    if cfg.linear_student:  # issue 29: the linear student is a pre-registered candidate
        specs_asked.append(linear_spec(env))
    for spec in specs_asked:
        channels = spec.channels
        res = fit(
            spec,
            data,
            replace(cfg.distill, method=sel.method),
            cfg.student_fit,
            cfg.seeds[0],
            targets if sel.method != "scratch" else None,
        )
        env.progress.step(f"select {spec.family} {list(channels)}", res.seconds)
        pv = predict(res.net, data.val.x)
        sel_out.candidates.append(
            Candidate(
                tuple(channels),
                count_parameters(res.net),
                {h: roc_auc(val_y[:, i], pv[h]) for i, h in enumerate(HEADS)},
                predict(res.net, data.test.x),
                res.best_step,
                int(res.history[-1]["step"]) if res.history else 0,
                spec.family,
            )
        )
        nets.append(res.net)
        specs.append(spec)
    hi = HEADS.index(sel.head)
    sel_out.chosen, sel_out.held = choose(
        [c.val_auc[sel.head] for c in sel_out.candidates],
        [c.params for c in sel_out.candidates],
        sel_out.teacher_val_auc[HEADS[hi]],
        sel.tolerance,
    )
    sel_out.net = nets[sel_out.chosen]
    sel_out.spec = specs[sel_out.chosen]
    c = sel_out.candidates[sel_out.chosen]
    days = day_blocks(data.test.start_ms)
    sel_out.chosen_test = {
        h: auc_interval(data.test.y[:, i], c.test[h], days, cfg.bootstrap)
        for i, h in enumerate(HEADS)
    }
    env.log(
        f"select: {c.family} {list(c.channels)} ({c.params} params), val AUC {sel.head} "
        f"{c.val_auc[sel.head]:.4f} vs teacher {sel_out.teacher_val_auc[sel.head]:.4f} "
        f"(held: {sel_out.held})"
    )
    return sel_out
