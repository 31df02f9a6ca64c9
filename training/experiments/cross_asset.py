"""Experiment B: cross-asset, low data. The pooled Apr–Jul teacher → an alt of Nov–Jan.

For each target alt (a period the teacher never saw): one chronological split of its
Nov–Jan history (purge + embargo). The student gets only the latest `fraction` of the
alt's training history (the slice). Rows:
- the pooled ensemble teacher and its single member, zero-shot on the alt's test bars;
- scratch on the slice; every distilled student on the slice (pooled teacher's targets);
- controls: scratch on the alt's full training history; KD from an ensemble trained on the
  slice alone; a student trained on the teacher's own training data plus the slice.
The distilled student is the right choice when the teacher's data cannot be given to the
student (only the teacher's outputs travel); the last control says what simply training on
more data would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from torch import nn

from service.market.klines import interval_ms
from training.data.dataset import Split
from training.data.series import (
    PooledFold,
    calendar_folds,
    concat,
    fold_from_splits,
    load_series,
    pooled_fold,
)
from training.experiments.common import (
    LINEAR,
    Env,
    StudentPlan,
    linear_control,
    teacher_targets,
    train_members,
    train_students,
    with_fits,
)
from training.experiments.config import ReportConfig
from training.experiments.harness import Preds, average, predict
from training.experiments.pooled import ENSEMBLE, SINGLE, PooledOutcome
from training.experiments.results import SettingResult

SCRATCH = "scratch (slice)"
FULL = "scratch (full alt history)"
SLICE_KD = "kd from slice-only teacher"
UNION = "scratch (teacher's data + slice)"


KD_DIVERSE = "kd (pooled diverse teacher)"
DIVERSE_ROW = "pooled diverse teacher"


def distilled(cfg: ReportConfig) -> list[str]:
    out = [f"{m} (pooled teacher)" for m in cfg.cross_asset.methods]
    return out + ([KD_DIVERSE] if cfg.diverse else [])


def n_runs(cfg: ReportConfig) -> int:
    ca = cfg.cross_asset
    if not ca.enabled:
        return 0
    per_target = len(cfg.members) + len(ca.seeds) * (4 + len(distilled(cfg)))
    return len(ca.targets) * per_target


def comparisons(cfg: ReportConfig) -> list[tuple[str, str]]:
    """Pre-registered family per target: the teacher vs the slice student, every distilled
    student vs each of the four controls and vs the logistic regression on the slice (the
    linear control, the student's own input and rows); KD from the diverse teacher vs KD
    from the TCN ensemble."""
    out = [(ENSEMBLE, SCRATCH), (ENSEMBLE, LINEAR), (SCRATCH, LINEAR)]
    for d in distilled(cfg):
        out += [(d, SCRATCH), (d, SLICE_KD), (d, FULL), (d, UNION), (d, LINEAR)]
    if cfg.diverse and "kd" in cfg.cross_asset.methods:
        out += [(KD_DIVERSE, "kd (pooled teacher)")]
    return out


@dataclass
class TargetData:
    """One alt's split, what the cross-domain setting reuses."""

    symbol: str
    small: PooledFold
    scratch: list[Preds]


def run(env: Env, a: PooledOutcome) -> tuple[list[SettingResult], dict[str, TargetData]]:
    """Setting B for every target alt."""
    env = with_fits(env, min_steps=env.cfg.cross_asset.min_steps)
    cfg, ca = env.cfg, env.cfg.cross_asset
    step = interval_ms(cfg.interval)
    t_params = env.params(env.t_spec)
    s_params = env.params(env.s_spec)
    out: list[SettingResult] = []
    kept: dict[str, TargetData] = {}
    for sym in ca.targets:
        s = load_series(sym, cfg.interval, ca.period, ca.last_bars)
        cf = calendar_folds(s.times, step, 1, cfg.embargo, ca.test_fraction, ca.val_fraction)[0]
        full = pooled_fold([s], cf)
        small = pooled_fold([s], cf, train_latest=ca.fraction)
        union_train = concat([a.last.train, small.train], [0, 5 * 10_000_000])
        union_train = _stride(union_train, ca.union_stride, keep_last=len(small.train))
        union = fold_from_splits(union_train, small.val, small)
        env.log(
            f"B {sym}: slice {len(small.train)} of {len(full.train)} training windows, "
            f"val {len(small.val)}, test {len(small.test)}; union {len(union.train)}"
        )
        res = SettingResult(
            f"B/{sym}",
            f"B. Cross-asset, low data: pooled Apr–Jul teacher → {sym} Nov–Jan",
            (
                f"{sym} 5-minute bars of Nov–Jan ({ca.period[:4]}-{ca.period[4:6]} on), one "
                f"chronological split (test the last {ca.test_fraction:.0%}, validation "
                f"{ca.val_fraction:.0%} before it, purge + embargo {cfg.embargo} bars). The "
                f"student sees the latest {ca.fraction:.0%} of the training history "
                f"({len(small.train)} of {len(full.train)} windows). Teacher: setting A's "
                f"last-fold ensemble ({len(a.members)} members, trained on the five pooled "
                f"symbols of Apr–Jul), applied with its own normalisation. The teacher's data "
                f"+ slice control trains on every {ca.union_stride}. window of A's last-fold "
                f"training set plus the whole slice ({len(union.train)} windows)."
            ),
            small.test.y,
            small.test.start_ms,
        )
        res.comparisons = comparisons(cfg)
        res.gaps = [
            (d, SCRATCH, DIVERSE_ROW if d == KD_DIVERSE else ENSEMBLE) for d in distilled(cfg)
        ]
        mp = [predict(m, small.test.x) for m in a.members]
        res.add(ENSEMBLE, average(mp), t_params * len(a.members))
        res.add(SINGLE, mp[min(cfg.feature_member, len(mp) - 1)], t_params)
        lin = linear_control(env, small, f"B {sym}")
        res.add(LINEAR, lin.predict(small.test.x), lin.params)
        pooled_t = teacher_targets(env, a.members, small.train.x)
        plan: StudentPlan = [(SCRATCH, "scratch", None)]
        plan += [(f"{m} (pooled teacher)", m, pooled_t) for m in ca.methods]
        if cfg.diverse and a.diverse is not None:
            res.add(DIVERSE_ROW, a.diverse.predict(small.test.x), 0)
            plan += [(KD_DIVERSE, "kd", a.diverse.targets(env, small.train.x))]
        preds, _ = train_students(env, small, small.test.x, plan, ca.seeds, f"B {sym}")
        slice_members: list[nn.Module] = train_members(env, small, f"B {sym} slice", cfg.members)
        res.add(
            "slice-only teacher",
            average([predict(m, small.test.x) for m in slice_members]),
            t_params * len(slice_members),
        )
        slice_t = teacher_targets(env, slice_members, small.train.x)
        more, _ = train_students(
            env, small, small.test.x, [(SLICE_KD, "kd", slice_t)], ca.seeds, f"B {sym}"
        )
        full_p, _ = train_students(
            env, full, small.test.x, [(FULL, "scratch", None)], ca.seeds, f"B {sym}"
        )
        union_p, _ = train_students(
            env, union, small.test.x, [(UNION, "scratch", None)], ca.seeds, f"B {sym}"
        )
        for group in (preds, more, full_p, union_p):
            for name, runs in group.items():
                for p in runs:
                    res.add(name, p, s_params)
        out.append(res)
        kept[sym] = TargetData(sym, small, preds[SCRATCH])
    return out, kept


def _stride(split: Split, k: int, keep_last: int) -> Split:
    """Every k-th row of the first part (the teacher's data), all of the last `keep_last`."""
    n = len(split)
    head: NDArray[np.int64] = np.arange(0, n - keep_last, max(1, k), dtype=np.int64)
    idx = np.r_[head, np.arange(n - keep_last, n, dtype=np.int64)]
    return Split(split.x[idx], split.y[idx], split.pos[idx], split.start_ms[idx])
