"""Experiment A: the five 5-minute symbols of Apr–Jul pooled, both heads, walk-forward.

Per fold (calendar boundaries shared by all symbols, purge + embargo before validation and
test, equal windows per symbol): the ensemble teacher's members (one per seed), then the
students of every method × seed, all distilling from the ensemble's targets (KD: averaged
tempered probabilities; features: `feature_member`). Rows: majority, ensemble teacher, single
teacher (member `feature_member`), scratch, label-smoothed (KD against a uniform teacher),
KD, every feature method, combined. The last fold's members and data are kept: the
cross-asset and cross-domain settings reuse the teacher, the selection step its data.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from service.market.klines import interval_ms
from training.data.series import (
    CalendarFold,
    PooledFold,
    Series,
    calendar_folds,
    load_series,
    pooled_fold,
)
from training.experiments.common import (
    Env,
    StudentPlan,
    majority,
    teacher_targets,
    train_members,
    train_students,
)
from training.experiments.config import ReportConfig
from training.experiments.harness import average, predict, uniform_targets
from training.experiments.results import SettingResult, concat_results

ENSEMBLE = "ensemble teacher"
SINGLE = "single teacher"
CONTROLS = ("scratch", "label-smoothed")


def student_rows(cfg: ReportConfig) -> list[str]:
    """Student row names in report order."""
    return ["scratch", "label-smoothed", "kd", *(m for m in cfg.pooled.methods if m != "kd")]


def n_runs(cfg: ReportConfig) -> int:
    """Training runs of this setting (for the progress bar)."""
    if not cfg.pooled.enabled:
        return 0
    return cfg.pooled.folds * (len(cfg.members) + len(student_rows(cfg)) * len(cfg.seeds))


def comparisons(cfg: ReportConfig) -> list[tuple[str, str]]:
    """The pre-registered family: teachers vs scratch, every student vs scratch, the
    label-smoothed control vs scratch, every feature method vs label smoothing and vs KD."""
    feats = [m for m in cfg.pooled.methods if m != "kd"]
    out = [(ENSEMBLE, "scratch"), (SINGLE, "scratch"), (ENSEMBLE, SINGLE)]
    out += [(s, "scratch") for s in student_rows(cfg) if s != "scratch"]
    out += [("kd", "label-smoothed")]
    out += [(m, "kd") for m in feats]
    return out


@dataclass
class PooledOutcome:
    """A's result plus what later steps reuse from the last fold."""

    result: SettingResult
    members: list[nn.Module]
    last: PooledFold
    series: list[Series]
    last_students: dict[str, nn.Module]
    last_fold: CalendarFold  # the last fold's boundaries (the selection step re-reads it)


def load_pooled(cfg: ReportConfig) -> list[Series]:
    """The pooled symbols' Apr–Jul 5-minute series (the earliest bundled file of each)."""
    return [load_series(s, cfg.interval, "", cfg.pooled.last_bars) for s in cfg.pooled.symbols]


def run(env: Env) -> PooledOutcome:
    """Every fold of setting A."""
    cfg, pc = env.cfg, env.cfg.pooled
    series = load_pooled(cfg)
    # fold boundaries from the first symbol's times; all symbols share them as instants
    step = interval_ms(cfg.interval)
    folds = calendar_folds(
        series[0].times, step, pc.folds, cfg.embargo, pc.test_fraction, pc.val_fraction
    )
    t_params = env.params(env.t_spec)
    s_params = env.params(env.s_spec)
    parts: list[SettingResult] = []
    members: list[nn.Module] = []
    pf: PooledFold | None = None
    students: dict[str, nn.Module] = {}
    for cf in folds:
        pf = pooled_fold(series, cf, pc.train_stride, val_stride=pc.val_stride)
        env.log(
            f"A fold {cf.index}: train {len(pf.train)} val {len(pf.val)} test {len(pf.test)} "
            f"windows over {len(series)} symbols"
        )
        res = SettingResult(
            "A",
            "A. Pooled five symbols (Apr–Jul 5m), walk-forward",
            "",
            pf.test.y,
            pf.test.start_ms,
            pf.test_symbol,
            comparisons=comparisons(cfg),
        )
        res.add("majority", majority(pf.train.y, len(pf.test)), 0)
        members = train_members(env, pf, f"A fold {cf.index}", cfg.members)
        member_preds = [predict(m, pf.test.x) for m in members]
        res.add(ENSEMBLE, average(member_preds), t_params * len(members))
        res.add(SINGLE, member_preds[min(cfg.feature_member, len(members) - 1)], t_params)
        cached = teacher_targets(env, members, pf.train.x)
        uniform = uniform_targets(members[0], len(pf.train))
        plan: StudentPlan = [("scratch", "scratch", None), ("label-smoothed", "kd", uniform)]
        plan += [(m, m, cached) for m in ("kd", *(m for m in pc.methods if m != "kd"))]
        preds, students = train_students(env, pf, pf.test.x, plan, cfg.seeds, f"A fold {cf.index}")
        for name, runs in preds.items():
            for p in runs:
                res.add(name, p, s_params)
        parts.append(res)
    assert pf is not None
    out = concat_results(parts)
    out.gaps = [(s, "scratch", ENSEMBLE) for s in student_rows(cfg) if s != "scratch"]
    out.description = (
        f"{', '.join(pc.symbols)} 5-minute bars of Apr–Jul, pooled; {pc.folds} walk-forward "
        f"folds with calendar boundaries shared by all symbols (each test block "
        f"{pc.test_fraction:.0%} of the period, validation the last {pc.val_fraction:.0%} of "
        f"each fold's training period, purge + embargo {cfg.embargo} bars before validation "
        f"and test), equal windows per symbol in every split, every {pc.train_stride}. "
        f"training window kept. Teacher: an ensemble of {len(cfg.members)} TCN members (seeds "
        f"{list(cfg.members)}); students distil its averaged tempered probabilities (KD) and "
        f"member {cfg.feature_member}'s features. {len(out.y)} pooled test windows."
    )
    out.notes["folds"] = [
        {"test_from_ms": f.test_lo, "test_to_ms": f.test_hi, "val_from_ms": f.val_lo} for f in folds
    ]
    return PooledOutcome(out, members, pf, series, students, folds[-1])
