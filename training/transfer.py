"""Transfer experiments: cross-timeframe, cross-asset and cross-domain distillation.

- cross-timeframe: a teacher on 1-minute bars distils a 5-minute student over the 30 days
  where both exist. The teacher's window for a 5-minute bar starting at s ends with the
  1-minute bar starting at s + 4 min, so both windows end at the same instant s + 5 min.
- cross-asset: the BTCUSDT teacher (last fold) distils students for a less liquid asset
  trained on a reduced slice of its data, against students trained on that slice alone (and
  a reference on all of the asset's training data).
- cross-domain: teacher channels whose activation statistics are closest between source
  (BTCUSDT) and target are selected — distance d_c = |μ_s − μ_t| / √((σ_s² + σ_t²)/2) +
  |ln(σ_s / σ_t)| per channel, over batch and time — only those are matched with the Gram
  (structural) loss in a hint stage, then the student is fine-tuned on the target's task.

Each experiment returns predictions for a common set of target test rows (one list per
model, one entry per seed) so the report can test them pairwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from service import features as fx
from service.klines import interval_ms
from training.data import Split
from training.distill import default_pairs
from training.experiment import (
    CachedTeacher,
    FoldData,
    fit,
    make_fold_data,
    network_outputs,
    predict_proba,
)
from training.walkforward import walk_forward_folds

if TYPE_CHECKING:
    from training.report import Context, Series

P = NDArray[np.float64]


@dataclass
class TransferResult:
    """One experiment's test rows, per-model predictions and notes for the report."""

    title: str
    description: str
    y: NDArray[np.int64]
    times: NDArray[np.int64]
    preds: dict[str, list[P]] = field(default_factory=dict)
    reference: str = "scratch"
    notes: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ pure helpers


def channel_distance(src: NDArray[np.floating], tgt: NDArray[np.floating]) -> NDArray[np.float64]:
    """Per-channel distance between activation statistics of two domains.

    src (N, C[, T]) and tgt (M, C[, T]); statistics over batch (and time). Returns (C,):
    standardised mean gap plus absolute log ratio of standard deviations (0 = identical).
    """

    def stats(a: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        x = np.asarray(a, dtype=np.float64)
        x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])  # (N·T, C)
        return x.mean(axis=0), x.std(axis=0)

    ms, ss = stats(src)
    mt, st = stats(tgt)
    eps = 1e-8
    pooled = np.sqrt((ss**2 + st**2) / 2.0) + eps
    return np.abs(ms - mt) / pooled + np.abs(np.log((ss + eps) / (st + eps)))


def select_channels(distance: NDArray[np.float64], keep_fraction: float) -> NDArray[np.int64]:
    """Indices of the `keep_fraction` closest channels, ascending index order."""
    k = max(1, round(keep_fraction * distance.size))
    return np.sort(np.argsort(distance, kind="stable")[:k]).astype(np.int64)


def aligned_rows(
    student_start: NDArray[np.int64],
    student_step_ms: int,
    teacher_end_start: NDArray[np.int64],
    teacher_step_ms: int,
) -> NDArray[np.int64]:
    """For each student window, the teacher window ending at the same instant (−1: none).

    A student bar starting at s closes at s + student_step; the teacher bar that closes then
    starts at s + student_step − teacher_step.
    """
    want = student_start + student_step_ms - teacher_step_ms
    idx = np.searchsorted(teacher_end_start, want)
    idx = np.clip(idx, 0, teacher_end_start.size - 1)
    return np.where(teacher_end_start[idx] == want, idx, -1).astype(np.int64)


def _take(split: Split, idx: NDArray[np.int64]) -> Split:
    return Split(split.x[idx], split.y[idx], split.pos[idx], split.start_ms[idx])


# ------------------------------------------------------------------------- experiments


def _students(
    ctx: Context,
    data: FoldData,
    plan: list[tuple[str, str, CachedTeacher | None, dict[str, Any]]],
    seeds: tuple[int, ...],
    preds: dict[str, list[P]],
) -> None:
    for name, method, tgt, over in plan:
        for seed in seeds:
            dcfg = replace(ctx.cfg.distill, method=method, **over)
            res = fit(ctx.s_spec, data, dcfg, ctx.cfg.student_fit, seed, tgt)
            preds.setdefault(name, []).append(predict_proba(res.net, data.test.x)["direction"])
        ctx.log(f"  transfer {name}: done")


def cross_timeframe(ctx: Context, series5: Series) -> TransferResult | None:
    """1-minute BTC teacher → 5-minute BTC student over the overlapping 30 days."""
    from training.report import load_series

    cfg = ctx.cfg
    try:
        s1 = load_series(cfg.symbol, "1", 0)
    except Exception as exc:  # no 1-minute bundle for this symbol
        ctx.log(f"cross-timeframe skipped: {exc}")
        return None
    lo, hi = int(s1.start[0]), int(s1.start[-1])
    keep = (series5.times >= lo) & (series5.times <= hi)
    ends5 = series5.ends[keep]
    if cfg.last_bars:  # quick mode: a small slice of the overlap
        ends5 = ends5[-min(ends5.size, cfg.last_bars) :]
    step5, step1 = interval_ms(series5.interval), interval_ms("1")
    t1_end_start = s1.start[s1.ends]
    align = aligned_rows(series5.start[ends5], step5, t1_end_start, step1)
    ok = align >= 0
    ends5, align = ends5[ok], align[ok]
    fold = walk_forward_folds(series5.start[ends5], step5, 1, 1, cfg.embargo, 0.25, 0.15)[0]
    data = make_fold_data(
        series5.feats, series5.labels, series5.pos, series5.start, series5.close, ends5, fold
    )
    # the 1-minute teacher: trained on 1-minute windows ending before the 5-minute val period
    val0 = int(data.val.start_ms[0])
    test0 = int(data.test.start_ms[0])
    gap1 = (1 + cfg.embargo) * step1
    tr1 = np.flatnonzero(t1_end_start + gap1 < val0 - step5)[:: max(1, cfg.transfer.teacher_stride)]
    va1 = np.flatnonzero((t1_end_start >= val0) & (t1_end_start + gap1 < test0))
    va1 = va1[:: max(1, cfg.transfer.teacher_stride)]
    from training.walkforward import Fold

    f1 = Fold(0, tr1.astype(np.int64), va1.astype(np.int64), va1[:2].astype(np.int64))
    d1 = make_fold_data(s1.feats, s1.labels, s1.pos, s1.start, s1.close, s1.ends, f1)
    t_res = fit(ctx.t_spec, d1, replace(cfg.distill, method="scratch"), cfg.teacher_fit, 0)
    teacher = t_res.net
    ctx.log(f"  1m teacher: {len(d1.train)} windows, {t_res.seconds:.1f}s")
    # teacher targets for each 5-minute training row from its aligned 1-minute window
    x1 = fx.make_windows(s1.feats, s1.ends[align[fold.train]])  # fold rows index ends5
    n_t = len(network_outputs(teacher, x1[:2], range(len(ctx.t_spec.channels)))[1])
    pairs = default_pairs(n_t, len(ctx.s_spec.channels))
    lg, fe = network_outputs(teacher, x1, sorted({t for t, _ in pairs}))
    cached = CachedTeacher(teacher, lg, fe)
    res = TransferResult(
        "Cross-timeframe: 1-minute teacher → 5-minute student",
        f"{cfg.symbol}, the {len(ends5)} five-minute windows whose aligned 1-minute window "
        f"exists ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test, "
        f"purge + embargo {cfg.embargo} bars); the 1-minute teacher trained on "
        f"{len(d1.train)} one-minute windows (stride {cfg.transfer.teacher_stride}) ending "
        "before the 5-minute validation period. Teacher window ends at the same instant as "
        "the student's bar.",
        data.test.y[:, 0],
        data.test.start_ms,
    )
    x1_test = fx.make_windows(s1.feats, s1.ends[align[fold.test]])
    res.preds["1m teacher (on aligned windows)"] = [predict_proba(teacher, x1_test)["direction"]]
    plan: list[tuple[str, str, CachedTeacher | None, dict[str, Any]]] = [
        ("scratch", "scratch", None, {}),
        ("kd from 1m", "kd", cached, {}),
        ("gram from 1m", "gram", cached, {}),
        ("combined from 1m", "combined", cached, {}),
    ]
    _students(ctx, data, plan, cfg.transfer.seeds, res.preds)
    return res


def _target_fold(ctx: Context, symbol: str) -> tuple[Series, FoldData, FoldData] | None:
    """The target asset's last walk-forward fold, and a copy with reduced training data."""
    from training.report import load_series

    cfg = ctx.cfg
    if ctx.last_data is None:
        return None
    try:
        tgt = load_series(symbol, cfg.interval, cfg.last_bars)
    except Exception as exc:
        ctx.log(f"cross-asset skipped: {exc}")
        return None
    step = interval_ms(cfg.interval)
    src = ctx.last_data
    times = tgt.times
    # the same calendar split as the source's last fold
    v0, t0 = int(src.val.start_ms[0]), int(src.test.start_ms[0])
    gap = (1 + cfg.embargo) * step
    train = np.flatnonzero(times + gap < v0)
    val = np.flatnonzero((times >= v0) & (times + gap < t0))
    test = np.flatnonzero(times >= t0)
    if min(train.size, val.size, test.size) < 50:
        ctx.log("cross-asset skipped: target too short")
        return None
    from training.walkforward import Fold

    full = make_fold_data(
        tgt.feats, tgt.labels, tgt.pos, tgt.start, tgt.close, tgt.ends, Fold(0, train, val, test)
    )
    n_keep = max(64, int(train.size * cfg.transfer.reduced_fraction))
    small = make_fold_data(
        tgt.feats,
        tgt.labels,
        tgt.pos,
        tgt.start,
        tgt.close,
        tgt.ends,
        Fold(0, train[-n_keep:], val, test),
    )
    return tgt, full, small


def cross_asset_and_domain(ctx: Context) -> list[TransferResult]:
    """BTC teacher → target-asset students on reduced data; plus channel-selected Gram."""
    cfg = ctx.cfg
    got = _target_fold(ctx, cfg.transfer.target_symbol)
    if got is None or ctx.last_teacher is None or ctx.last_data is None:
        return []
    _, full, small = got
    teacher = ctx.last_teacher
    sym = cfg.transfer.target_symbol
    n_t = len(ctx.t_spec.channels)
    pairs = default_pairs(n_t, len(ctx.s_spec.channels))
    layers = sorted({t for t, _ in pairs})
    lg, fe = network_outputs(teacher, small.train.x, layers)
    cached = CachedTeacher(teacher, lg, fe)
    out: list[TransferResult] = []
    if cfg.transfer.cross_asset:
        res = TransferResult(
            f"Cross-asset: {cfg.symbol} teacher → {sym} student with reduced data",
            f"{sym} {cfg.interval}m on the calendar split of the main run's last fold; reduced "
            f"training data = the latest {len(small.train)} windows "
            f"({cfg.transfer.reduced_fraction:.0%} of {len(full.train)}); test {len(full.test)} "
            f"windows. The teacher is the {cfg.symbol} last-fold teacher (its own {cfg.symbol} "
            f"normalisation, fed raw {sym} features).",
            small.test.y[:, 0],
            small.test.start_ms,
        )
        res.preds[f"{cfg.symbol} teacher (zero-shot on {sym})"] = [
            predict_proba(teacher, small.test.x)["direction"]
        ]
        plan: list[tuple[str, str, CachedTeacher | None, dict[str, Any]]] = [
            ("scratch", "scratch", None, {}),
            ("kd", "kd", cached, {}),
            ("combined", "combined", cached, {}),
        ]
        _students(ctx, small, plan, cfg.transfer.seeds, res.preds)
        ref: dict[str, list[P]] = {}
        _students(
            ctx,
            full,
            [(f"scratch on all {sym} data", "scratch", None, {})],
            cfg.transfer.seeds,
            ref,
        )
        res.preds.update(ref)
        out.append(res)
    if cfg.transfer.cross_domain:
        # activation statistics of the matched teacher layers on source vs target training data
        src_x = ctx.last_data.train.x[:: max(1, len(ctx.last_data.train) // 4000)]
        _, src_f = network_outputs(teacher, src_x, layers)
        channels: dict[int, torch.Tensor] = {}
        dist_notes: dict[str, Any] = {}
        for k in layers:
            d = channel_distance(src_f[k].numpy(), fe[k].numpy())
            sel = select_channels(d, cfg.transfer.keep_fraction)
            channels[k] = torch.from_numpy(sel)
            dist_notes[f"layer {k}"] = {
                "kept": int(sel.size),
                "of": int(d.size),
                "median distance kept": float(np.median(d[sel])),
                "median distance dropped": float(np.median(np.delete(d, sel)))
                if sel.size < d.size
                else 0.0,
            }
        selected = CachedTeacher(teacher, lg, fe, channels=channels)
        res = TransferResult(
            f"Cross-domain: channel-selected Gram matching, {cfg.symbol} → {sym}",
            f"Teacher channels ranked by d_c = |μ_src − μ_tgt| / √((σ_src² + σ_tgt²)/2) + "
            f"|ln(σ_src/σ_tgt)| (statistics over batch and time, source = {cfg.symbol} training "
            f"windows, target = the reduced {sym} training windows); the closest "
            f"{cfg.transfer.keep_fraction:.0%} are matched with the Gram loss only during a hint "
            f"stage of {ctx.cfg.distill.hint_epochs} epochs, then the student is fine-tuned on "
            f"the {sym} task (no KD).",
            small.test.y[:, 0],
            small.test.start_ms,
            notes={"channel selection": dist_notes},
        )
        hint = {"two_stage": True, "beta": 0.0, "alpha": 1.0}
        if cfg.student_fit.epochs <= ctx.cfg.distill.hint_epochs:
            hint = {"two_stage": False, "beta": 0.0}
        plan = [
            ("scratch", "scratch", None, {}),
            ("gram, all channels", "gram", cached, hint),
            ("gram, selected channels", "gram", selected, hint),
        ]
        _students(ctx, small, plan, cfg.transfer.seeds, res.preds)
        out.append(res)
    return out


def run_transfer(ctx: Context, series: Series) -> list[TransferResult]:
    """All enabled transfer experiments (each skipped with a log line if data is missing)."""
    cfg = ctx.cfg.transfer
    results: list[TransferResult] = []
    if cfg.cross_timeframe:
        ctx.log("transfer: cross-timeframe")
        r = cross_timeframe(ctx, series)
        if r is not None:
            results.append(r)
    if cfg.cross_asset or cfg.cross_domain:
        ctx.log("transfer: cross-asset / cross-domain")
        results.extend(cross_asset_and_domain(ctx))
    return results
