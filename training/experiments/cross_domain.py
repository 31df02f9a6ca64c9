"""Experiment D: cross-domain. FX / equity teachers → a data-starved crypto student.

Teachers train on the `backtesting` package's bars (EURUSD hourly, GOOG daily; both heads'
labels as DESIGN section 3 defines them on those bars), chronological split by rows (the
first 70 % train, purge + embargo, then 15 % validation). Their KD targets, computed on the
cross-asset setting's slice of the target alt, train students there. The rows sit beside
that setting's scratch-on-slice student and its pooled-crypto-teacher KD student, on the
same test bars: the domain-shift row of the distillation study.
"""

from __future__ import annotations

import numpy as np

from training.data.series import PooledFold, Series, assemble, backtesting_series
from training.experiments.common import (
    LINEAR,
    Env,
    StudentPlan,
    teacher_targets,
    train_members,
    train_students,
    with_fits,
)
from training.experiments.config import ReportConfig
from training.experiments.cross_asset import SCRATCH, TargetData
from training.experiments.harness import average, predict
from training.experiments.results import SettingResult


def n_runs(cfg: ReportConfig) -> int:
    d = cfg.cross_domain
    if not d.enabled or d.target not in cfg.cross_asset.targets or not cfg.cross_asset.enabled:
        return 0
    return len(d.sources) * (len(cfg.members) + len(d.seeds) * len(d.methods))


def source_fold(s: Series, embargo: int) -> PooledFold:
    """Rows 0..70 % train, then a gap of 1 + embargo rows, then 15 % validation."""
    n = s.ends.size
    n_tr = int(n * 0.70)
    gap = 1 + embargo
    tr = np.arange(0, n_tr, dtype=np.int64)
    va = np.arange(n_tr + gap, min(n, n_tr + gap + int(n * 0.15)), dtype=np.int64)
    te = va[-2:]  # unused: the teacher is scored on the crypto target only
    return assemble([s], {"train": [tr], "val": [va], "test": [te]}, 0)


def run(env: Env, b: SettingResult, target: TargetData) -> SettingResult:
    env = with_fits(env, min_steps=env.cfg.cross_domain.min_steps)
    cfg, d = env.cfg, env.cfg.cross_domain
    small = target.small
    t_params = env.params(env.t_spec)
    s_params = env.params(env.s_spec)
    res = SettingResult(
        "D",
        f"D. Cross-domain: FX / equity teachers → {target.symbol} student (domain shift)",
        (
            f"Teachers ({len(cfg.members)}-member ensembles) on "
            f"{', '.join(d.sources)} bars from the `backtesting` package (EURUSD hourly "
            f"2017–2018, GOOG daily 2004–2013); students on the cross-asset slice of "
            f"{target.symbol} ({len(small.train)} windows), scored on its {len(small.test)} "
            f"test windows. The pooled crypto teacher's rows are copied from setting B."
        ),
        small.test.y,
        small.test.start_ms,
    )
    pooled_kd = f"{d.methods[0]} (pooled teacher)"
    for name, as_name in (
        ("ensemble teacher", "pooled crypto teacher (zero-shot)"),
        (SCRATCH, SCRATCH),
        (pooled_kd, pooled_kd),
        (LINEAR, LINEAR),  # the linear control on the same slice (setting B's)
    ):
        if name in b.preds:
            res.preds[as_name] = b.preds[name]
            res.params[as_name] = b.params[name]
    for src in d.sources:
        s = backtesting_series(src)
        fold = source_fold(s, cfg.embargo)
        env.log(f"D {src}: teacher train {len(fold.train)} val {len(fold.val)}")
        members = train_members(env, fold, f"D {src}", cfg.members)
        res.add(
            f"{src} teacher (zero-shot)",
            average([predict(m, small.test.x) for m in members]),
            t_params * len(members),
        )
        tgt = teacher_targets(env, members, small.train.x)
        plan: StudentPlan = [(f"{m} from {src} teacher", m, tgt) for m in d.methods]
        preds, _ = train_students(env, small, small.test.x, plan, d.seeds, f"D {src}")
        for name, runs in preds.items():
            for p in runs:
                res.add(name, p, s_params)
            res.comparisons += [(name, SCRATCH)]
            if LINEAR in res.preds:
                res.comparisons += [(name, LINEAR)]
            if pooled_kd in res.preds:
                res.comparisons += [(name, pooled_kd)]
            res.gaps.append((name, SCRATCH, f"{src} teacher (zero-shot)"))
        res.comparisons.insert(0, (f"{src} teacher (zero-shot)", SCRATCH))
    return res
