"""Experiment C: cross-timeframe. A 1-minute teacher → a 5-minute student, with a 5-minute
teacher of the same size and ensemble as its control.

The 30 days where 1-minute bars exist (late May – late June), for each configured symbol,
pooled by calendar time as in A: one chronological split (purge + embargo in 5-minute bars).
The 1-minute teacher trains on every `teacher_stride`-th one-minute window (its own labels,
both heads) ending before the 5-minute validation period. For a 5-minute window whose last
bar starts at s, the teacher reads the 1-minute window ending with the bar that starts at
s + 4 min, so both windows end at the same instant s + 5 min (`transfer.aligned_rows`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from service import features as fx
from service.klines import interval_ms
from training.data import Split
from training.exp_common import Env, StudentPlan, teacher_targets, train_members, train_students
from training.harness import average, predict
from training.report_config import ReportConfig
from training.results import SettingResult
from training.series import POS_STRIDE, Series, calendar_folds, load_series, pooled_fold
from training.transfer import aligned_rows

T1 = "1m teacher"
T5 = "5m teacher"


def n_runs(cfg: ReportConfig) -> int:
    c = cfg.cross_timeframe
    if not c.enabled:
        return 0
    return 2 * len(c.members) + len(c.seeds) * (1 + 2 * len(c.methods))


def comparisons(cfg: ReportConfig) -> list[tuple[str, str]]:
    out = [(T1, "scratch"), (T5, "scratch"), (T1, T5)]
    for m in cfg.cross_timeframe.methods:
        out += [(f"{m} from 1m", "scratch"), (f"{m} from 5m", "scratch")]
        out += [(f"{m} from 1m", f"{m} from 5m")]
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


def _take(split: Split, k: int) -> Split:
    return Split(split.x[::k], split.y[::k], split.pos[::k], split.start_ms[::k])


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
    pf1 = pooled_fold(s1s, cf, c.teacher_stride)
    pf1 = replace(pf1, val=_take(pf1.val, c.teacher_stride))
    env.log(
        f"C: 5m train {len(pf5.train)} val {len(pf5.val)} test {len(pf5.test)}; 1m teacher "
        f"train {len(pf1.train)} val {len(pf1.val)}"
    )
    t_params = env.params(env.t_spec)
    s_params = env.params(env.s_spec)
    res = SettingResult(
        "C",
        "C. Cross-timeframe: 1-minute teacher → 5-minute student",
        (
            f"{', '.join(c.symbols)}, the 5-minute windows whose aligned 1-minute window exists "
            f"(late May – late June), pooled: {len(pf5.train)} train / {len(pf5.val)} val / "
            f"{len(pf5.test)} test windows, purge + embargo {cfg.embargo} five-minute bars. "
            f"1-minute teacher: ensemble of {len(c.members)} members trained on every "
            f"{c.teacher_stride}. one-minute window ({len(pf1.train)}) of the same training "
            f"period, on its own 1-minute labels; 5-minute teacher: the same ensemble size on "
            f"the 5-minute training windows. Each teacher's row is scored on the 5-minute "
            f"labels (the 1-minute one reading the aligned 1-minute windows)."
        ),
        pf5.test.y,
        pf5.test.start_ms,
        pf5.test_symbol,
        comparisons=comparisons(cfg),
    )
    m1 = train_members(env, pf1, "C 1m", c.members)
    m5 = train_members(env, pf5, "C 5m", c.members)
    x1_test = aligned_windows(pf5.test, s1s)
    res.add(T1, average([predict(m, x1_test) for m in m1]), t_params * len(m1))
    res.add(T5, average([predict(m, pf5.test.x) for m in m5]), t_params * len(m5))
    t1 = teacher_targets(env, m1, aligned_windows(pf5.train, s1s))
    t5 = teacher_targets(env, m5, pf5.train.x)
    plan: StudentPlan = [("scratch", "scratch", None)]
    for m in c.methods:
        plan += [(f"{m} from 1m", m, t1), (f"{m} from 5m", m, t5)]
    preds, _ = train_students(env, pf5, pf5.test.x, plan, c.seeds, "C")
    for name, runs in preds.items():
        for p in runs:
            res.add(name, p, s_params)
    for m in c.methods:
        res.gaps += [(f"{m} from 1m", "scratch", T1), (f"{m} from 5m", "scratch", T5)]
    return res
