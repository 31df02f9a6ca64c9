"""Experiment C: cross-timeframe. Teachers that read 1-minute bars → a 5-minute student, with
a 5-minute teacher of the same size and ensemble as the control.

The 30 days where 1-minute bars exist (late May – late June), for each configured symbol,
pooled by calendar time as in A: one chronological split (purge + embargo in 5-minute bars).
Every teacher learns the *5-minute* labels of the student's own training rows (DESIGN §3:
the next 5-minute candle's direction and range regime); they differ only in what they read
for a 5-minute row whose last bar starts at s:

- `1m teacher`: the 1-minute window ending with the bar that starts at s + 4 min, so both
  windows end at the same instant s + 5 min (`transfer.aligned_rows`): 32 minutes of
  finer bars instead of 160 minutes of 5-minute ones;
- `1m+5m teacher`: that 1-minute window stacked on the student's 5-minute window
  (24 channels × 32 steps): everything the student sees plus the finer bars, the
  privileged-information case;
- `5m teacher`: the student's own 5-minute window (the control).

(An earlier version trained the 1-minute teacher on 1-minute labels and scored it on 5-minute
ones: a different task, so its rows measured the label mismatch, not the timeframe.)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from service import features as fx
from service.market.klines import interval_ms
from training.data.dataset import Split
from training.data.series import (
    POS_STRIDE,
    PooledFold,
    Series,
    calendar_folds,
    fold_from_splits,
    load_series,
    pooled_fold,
)
from training.data.transfer import aligned_rows
from training.experiments.common import (
    LINEAR,
    Env,
    StudentPlan,
    linear_control,
    teacher_targets,
    train_members,
    train_students,
)
from training.experiments.config import ReportConfig
from training.experiments.harness import average, predict
from training.experiments.results import SettingResult

T1 = "1m teacher"
T15 = "1m+5m teacher"
T5 = "5m teacher"
TEACHERS = {T1: "1m", T15: "1m+5m", T5: "5m"}  # row name → the students' "from ..." suffix


def n_runs(cfg: ReportConfig) -> int:
    c = cfg.cross_timeframe
    if not c.enabled:
        return 0
    return len(TEACHERS) * len(c.members) + len(c.seeds) * (1 + len(TEACHERS) * len(c.methods))


def comparisons(cfg: ReportConfig) -> list[tuple[str, str]]:
    """Each teacher vs scratch and each 1-minute reader vs the 5-minute teacher; per method,
    each student vs scratch, the 1-minute-taught ones vs the 5-minute-taught one, and every
    feature method vs KD from the same teacher."""
    out = [(t, "scratch") for t in TEACHERS] + [(T1, T5), (T15, T5)]
    out += [(T5, LINEAR), ("scratch", LINEAR)]
    for m in cfg.cross_timeframe.methods:
        out += [(f"{m} from {k}", "scratch") for k in TEACHERS.values()]
        out += [(f"{m} from {k}", LINEAR) for k in TEACHERS.values()]
        out += [(f"{m} from 1m", f"{m} from 5m"), (f"{m} from 1m+5m", f"{m} from 5m")]
        if m != "kd":
            out += [(f"{m} from {k}", f"kd from {k}") for k in TEACHERS.values()]
    return out


def aligned_windows(split: Split, one_minute: list[Series]) -> np.ndarray:
    """(M, F, T) 1-minute windows ending at the same instant as each 5-minute row.

    Rows of symbol k carry bar positions in [k·POS_STRIDE, (k+1)·POS_STRIDE) (series.concat).
    """
    step5, step1 = interval_ms("5"), interval_ms("1")
    out = np.empty_like(split.x)
    sym = split.pos // POS_STRIDE
    for k, s1 in enumerate(one_minute):
        rows = np.flatnonzero(sym == k)
        if rows.size == 0:
            continue
        idx = aligned_rows(split.start_ms[rows], step5, s1.times, step1)
        if np.any(idx < 0):
            raise ValueError(f"{s1.symbol}: a 5-minute row has no aligned 1-minute window")
        out[rows] = fx.make_windows(s1.feats, s1.ends[idx])
    return out


def reading(split: Split, one_minute: list[Series], teacher: str) -> Split:
    """The split as `teacher` reads it: the same rows and 5-minute labels, other inputs."""
    if teacher == T5:
        return split
    x1 = aligned_windows(split, one_minute)  # (M, 12, 32)
    x = x1 if teacher == T1 else np.concatenate([x1, split.x], axis=1)  # (M, 24, 32)
    return replace(split, x=x)


def teacher_fold(pf5: PooledFold, one_minute: list[Series], teacher: str) -> PooledFold:
    """A's fold as `teacher` reads it (its own training-row statistics)."""
    if teacher == T5:
        return pf5
    tr = reading(pf5.train, one_minute, teacher)
    va = reading(pf5.val, one_minute, teacher)
    return fold_from_splits(tr, va, pf5, pf5.index)


def run(env: Env) -> SettingResult:
    cfg, c = env.cfg, env.cfg.cross_timeframe
    step5, step1 = interval_ms(cfg.interval), interval_ms("1")
    s1s, s5s = [], []
    for sym in c.symbols:
        s1 = load_series(sym, "1", "", 5 * c.last_bars if c.last_bars else 0)
        s5 = load_series(sym, cfg.interval, "", 0)
        ok = aligned_rows(s5.times, step5, s1.times, step1) >= 0
        ends = s5.ends[ok]
        if c.last_bars:
            ends = ends[-c.last_bars :]
        s1s.append(s1)
        s5s.append(replace(s5, ends=ends))
    cf = calendar_folds(s5s[0].times, step5, 1, cfg.embargo, c.test_fraction, c.val_fraction)[0]
    pf5 = pooled_fold(s5s, cf)
    env.log(f"C: 5m train {len(pf5.train)} val {len(pf5.val)} test {len(pf5.test)}")
    s_params = env.params(env.s_spec)
    res = SettingResult(
        "C",
        "C. Cross-timeframe: teachers that read 1-minute bars → 5-minute student",
        (
            f"{', '.join(c.symbols)}, the 5-minute windows whose aligned 1-minute window exists "
            f"(late May – late June), pooled: {len(pf5.train)} train / {len(pf5.val)} val / "
            f"{len(pf5.test)} test windows, purge + embargo {cfg.embargo} five-minute bars. "
            f"Every teacher is an ensemble of {len(c.members)} members trained on the same "
            f"rows and 5-minute labels as the student; for each row the `1m teacher` reads the "
            f"32 one-minute bars ending at the same instant as the student's window, the "
            f"`1m+5m teacher` those stacked on the student's 5-minute window (24 channels), "
            f"the `5m teacher` the student's window."
        ),
        pf5.test.y,
        pf5.test.start_ms,
        pf5.test_symbol,
        comparisons=comparisons(cfg),
    )
    lin = linear_control(env, pf5, "C")  # the student's input, rows and labels
    res.add(LINEAR, lin.predict(pf5.test.x), lin.params)
    plan: StudentPlan = [("scratch", "scratch", None)]
    for name, suffix in TEACHERS.items():
        data = teacher_fold(pf5, s1s, name)
        n_feat = int(data.train.x.shape[1])
        t_env = replace(env, t_spec=replace(env.t_spec, n_features=n_feat))
        members = train_members(t_env, data, f"C {suffix}", c.members)
        test_x = reading(pf5.test, s1s, name).x
        t_params = t_env.params(t_env.t_spec) * len(members)
        res.add(name, average([predict(m, test_x) for m in members]), t_params)
        targets = teacher_targets(t_env, members, data.train.x)
        plan += [(f"{m} from {suffix}", m, targets) for m in c.methods]
    preds, _ = train_students(env, pf5, pf5.test.x, plan, c.seeds, "C")
    for name, runs in preds.items():
        for p in runs:
            res.add(name, p, s_params)
    for name, suffix in TEACHERS.items():
        res.gaps += [(f"{m} from {suffix}", "scratch", name) for m in c.methods]
    return res
