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
    DIVERSE,
    LINEAR,
    LINEAR_STUDENT,
    TREES,
    Diverse,
    Env,
    StudentPlan,
    diverse_teacher,
    linear_control,
    linear_spec,
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
KD_DIVERSE = "kd (diverse teacher)"


def student_rows(cfg: ReportConfig) -> list[str]:
    """Student row names in report order (the [16,16] TCN students, then the linear one)."""
    out = ["scratch", "label-smoothed", "kd"]
    out += [KD_DIVERSE] if cfg.diverse else []
    out += [m for m in cfg.pooled.methods if m != "kd"]
    return out + ([LINEAR_STUDENT] if cfg.linear_student else [])


def n_runs(cfg: ReportConfig) -> int:
    """Training runs of this setting (for the progress bar)."""
    if not cfg.pooled.enabled:
        return 0
    return cfg.pooled.folds * (len(cfg.members) + len(student_rows(cfg)) * len(cfg.seeds))


def comparisons(cfg: ReportConfig) -> list[tuple[str, str]]:
    """The pre-registered family: teachers vs scratch, every student vs scratch, the
    label-smoothed control vs scratch, every feature method vs KD; the linear control: the
    teachers and every distilled student vs the logistic regression; the diverse teacher vs
    the TCN ensemble and KD from it vs KD from the TCN ensemble."""
    feats = [m for m in cfg.pooled.methods if m != "kd"]
    out = [(ENSEMBLE, "scratch"), (SINGLE, "scratch"), (ENSEMBLE, SINGLE)]
    out += [(s, "scratch") for s in student_rows(cfg) if s != "scratch"]
    out += [("kd", "label-smoothed")]
    out += [(m, "kd") for m in feats]
    out += [(ENSEMBLE, LINEAR), ("scratch", LINEAR)]
    out += [(s, LINEAR) for s in student_rows(cfg) if s not in CONTROLS]
    if cfg.diverse:
        out += [(DIVERSE, ENSEMBLE), (DIVERSE, LINEAR), (KD_DIVERSE, "kd")]
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
    diverse: Diverse | None = None  # the last fold's diverse teacher (B distils it too)


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
    div: Diverse | None = None
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
        lin = linear_control(env, pf, f"A fold {cf.index}")
        res.add(LINEAR, lin.predict(pf.test.x), lin.params)
        members = train_members(env, pf, f"A fold {cf.index}", cfg.members)
        member_preds = [predict(m, pf.test.x) for m in members]
        res.add(ENSEMBLE, average(member_preds), t_params * len(members))
        res.add(SINGLE, member_preds[min(cfg.feature_member, len(members) - 1)], t_params)
        cached = teacher_targets(env, members, pf.train.x)
        uniform = uniform_targets(members[0], len(pf.train))
        plan: StudentPlan = [("scratch", "scratch", None), ("label-smoothed", "kd", uniform)]
        plan += [("kd", "kd", cached)]
        if cfg.diverse:
            div = diverse_teacher(env, pf, members, f"A fold {cf.index}", lin)
            res.add(TREES, div.trees.predict(pf.test.x), 0)
            res.add(DIVERSE, div.predict(pf.test.x), t_params * len(members) + lin.params)
            plan += [(KD_DIVERSE, "kd", div.targets(env, pf.train.x))]
        plan += [(m, m, cached) for m in pc.methods if m != "kd"]
        preds, students = train_students(env, pf, pf.test.x, plan, cfg.seeds, f"A fold {cf.index}")
        for name, runs in preds.items():
            for p in runs:
                res.add(name, p, s_params)
        if cfg.linear_student:
            lp, _ = train_students(
                env,
                pf,
                pf.test.x,
                [(LINEAR_STUDENT, "kd", cached)],
                cfg.seeds,
                f"A fold {cf.index}",
                linear_spec(env),
            )
            for p in lp[LINEAR_STUDENT]:
                res.add(LINEAR_STUDENT, p, env.params(linear_spec(env)))
        parts.append(res)
    assert pf is not None
    out = concat_results(parts)
    out.gaps = [
        (s, "scratch", ENSEMBLE) for s in student_rows(cfg) if s not in ("scratch", KD_DIVERSE)
    ]
    if cfg.diverse:
        out.gaps.append((KD_DIVERSE, "scratch", DIVERSE))
    out.description = (
        f"{', '.join(pc.symbols)} 5-minute bars of Apr–Jul, pooled; {pc.folds} walk-forward "
        f"folds with calendar boundaries shared by all symbols (each test block "
        f"{pc.test_fraction:.0%} of the period, validation the last {pc.val_fraction:.0%} of "
        f"each fold's training period, purge + embargo {cfg.embargo} bars before validation "
        f"and test), equal windows per symbol in every split, every {pc.train_stride}. "
        f"training window kept. Teacher: an ensemble of {len(cfg.members)} TCN members (seeds "
        f"{list(cfg.members)}); students distil its averaged tempered probabilities (KD) and "
        f"member {cfg.feature_member}'s features. Controls: a logistic regression on the "
        f"flattened standardised window (C chosen on validation) trained on the same windows"
        + (
            "; a diverse teacher (the logistic regression, LightGBM on per-channel window "
            "summaries early-stopped on validation, and the TCN ensemble, a third each) "
            "distilled by KD into the same student"
            if cfg.diverse
            else ""
        )
        + (
            "; a linear student (the flattened window → both heads, distilled by KD from "
            "the TCN ensemble)"
            if cfg.linear_student
            else ""
        )
        + f". {len(out.y)} pooled test windows."
    )
    out.notes["folds"] = [
        {"test_from_ms": f.test_lo, "test_to_ms": f.test_hi, "val_from_ms": f.val_lo} for f in folds
    ]
    return PooledOutcome(out, members, pf, series, students, folds[-1], div)
