"""`python -m training report`: walk-forward comparison of teacher, baselines and students.

Top to bottom: config → bundled klines → features/windows → walk-forward folds (purge +
embargo) → per fold: teachers (each seed) and cross-fitted half-teachers, cached teacher
targets, students of every method × seed, CKA against the teacher → pooled metrics, paired
tests, backtest, transfer experiments → reports/<name>/report.md + PNGs → the exported
student in models/ (the last fold's student of `export_method`, seed 0, so its card carries
honest out-of-sample metrics).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from service import features as fx
from service.kline_io import load_bundled
from service.klines import interval_ms
from training.analysis import centred_gram, cka_matrix_from_grams
from training.data import Split, features_with_gaps
from training.distill import default_pairs
from training.evaluate import LeakageAlarm, last_return_baseline, leakage_check, majority_baseline
from training.experiment import (
    CachedTeacher,
    FitResult,
    FoldData,
    fit,
    make_fold_data,
    network_outputs,
    predict_proba,
)
from training.networks import NetSpec, count_parameters, default_spec
from training.report_config import ReportConfig, load_report_config
from training.walkforward import Fold, check_no_leakage, walk_forward_folds

P = NDArray[np.float64]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Series:
    """One symbol's windows: rows of `ends` are the samples, in time order."""

    symbol: str
    interval: str
    feats: NDArray[np.float64]
    labels: NDArray[np.float64]
    pos: NDArray[np.int64]
    start: NDArray[np.int64]
    close: NDArray[np.float64]
    ends: NDArray[np.int64]

    @property
    def times(self) -> NDArray[np.int64]:
        return self.start[self.ends]


def load_series(symbol: str, interval: str, last_bars: int = 0, window: int = fx.WINDOW) -> Series:
    """Bundled klines → features per contiguous run → window ends that span no gap."""
    table = load_bundled(symbol, interval)
    if last_bars > 0:
        table = table.slice(max(0, len(table) - last_bars), None)
    feats, labels, pos = features_with_gaps(table)
    ends = fx.window_ends(feats, labels, window)
    ends = ends[pos[ends] - pos[ends - (window - 1)] == window - 1]
    return Series(symbol, interval, feats, labels, pos, table.start, table.close, ends)


def subset(split: Split, mask: NDArray[np.bool_]) -> Split:
    """Rows of a split where mask is true."""
    return Split(split.x[mask], split.y[mask], split.pos[mask], split.start_ms[mask])


@dataclass
class FoldOutput:
    """Everything the report needs from one fold."""

    index: int
    y: NDArray[np.int64]
    times: NDArray[np.int64]
    next_ret: P
    preds: dict[str, list[P]] = field(default_factory=dict)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cka: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    cka_debiased: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    cka_n: int = 0
    spans: dict[str, tuple[int, int, int]] = field(default_factory=dict)


@dataclass
class Context:
    """Run-wide state: config, specs, log, the artefacts kept for export and transfer."""

    cfg: ReportConfig
    log: Log
    t_spec: NetSpec
    s_spec: NetSpec
    last_teacher: torch.nn.Module | None = None
    last_data: FoldData | None = None
    export_student: torch.nn.Module | None = None
    export_teacher_p: P | None = None
    export_cka: dict[str, float] = field(default_factory=dict)


def cross_fitted_logits(
    ctx: Context, data: FoldData, gap_bars: int, step_ms: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher logits for the training rows from teachers that never saw those bars.

    The training period is cut in two halves (purge + embargo between them); the teacher of
    each half labels the other half.
    """
    tr = data.train
    mid = tr.start_ms[len(tr) // 2]
    gap = gap_bars * step_ms
    first = tr.start_ms + gap < mid
    second = tr.start_ms >= mid
    out = torch.zeros(len(tr), 2, 2)  # (M, heads, classes)
    secs = 0.0
    for own, other in ((first, second), (second, first)):
        half = replace(data, train=subset(tr, own))
        res = fit(
            ctx.t_spec, half, replace(ctx.cfg.distill, method="scratch"), ctx.cfg.teacher_fit, 0
        )
        secs += res.seconds
        idx = np.flatnonzero(other)
        lg, _ = network_outputs(res.net, tr.x[idx])
        out[torch.from_numpy(idx)] = lg
    # the few rows inside the purge gap between the halves keep zero logits (a uniform
    # target): the second-half teacher's first windows overlap their bars
    return out, {"xfit_teachers": secs}


def run_fold(ctx: Context, series: Series, fold: Fold, is_last: bool) -> FoldOutput:
    """Teachers, baselines and every student on one walk-forward fold."""
    cfg, log = ctx.cfg, ctx.log
    step = interval_ms(series.interval)
    data = make_fold_data(
        series.feats, series.labels, series.pos, series.start, series.close, series.ends, fold
    )
    out = FoldOutput(fold.index, data.test.y[:, 0], data.test.start_ms, data.test_next_ret)
    for part, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        out.spans[part] = (int(split.start_ms[0]), int(split.start_ms[-1]), len(split))
    log(f"fold {fold.index}: train {len(data.train)} val {len(data.val)} test {len(data.test)}")
    scratch_cfg = replace(cfg.distill, method="scratch")

    # baselines on the same rows
    out.preds["majority"] = [majority_baseline(data.train.y[:, 0], len(data.test))]
    out.preds["last-return sign"] = [
        last_return_baseline(data.train.x, data.train.y[:, 0], data.test.x)
    ]

    # teachers: one per seed; seed 0's is the one every student distils from
    teachers: list[FitResult] = []
    for seed in cfg.teacher_seeds:
        res = fit(ctx.t_spec, data, scratch_cfg, cfg.teacher_fit, seed)
        teachers.append(res)
        out.preds.setdefault("teacher", []).append(predict_proba(res.net, data.test.x)["direction"])
        log(f"  teacher seed {seed}: {res.seconds:.1f}s best epoch {res.best_epoch}")
    teacher = teachers[0].net
    out.histories["teacher"] = teachers[0].history
    out.seconds["teacher"] = float(np.mean([t.seconds for t in teachers]))

    # cached targets: teacher logits + matched features on the training rows
    n_t = len(ctx.t_spec.channels)  # one feature per block
    n_s = len(ctx.s_spec.channels)
    pairs = [tuple(p) for p in cfg.distill.pairs] or default_pairs(n_t, n_s)
    out.pairs = [(int(a), int(b)) for a, b in pairs]
    layers = sorted({t for t, _ in pairs})
    t_logits, t_feats = network_outputs(teacher, data.train.x, layers)
    cached = CachedTeacher(teacher, t_logits, t_feats)
    uniform = CachedTeacher(teacher, torch.zeros_like(t_logits), {})
    xfit_logits, xsecs = cross_fitted_logits(ctx, data, 1 + cfg.embargo, step)
    out.seconds.update(xsecs)
    xfit = CachedTeacher(teacher, xfit_logits, t_feats)

    # students: (report name, distill method, targets)
    plan: list[tuple[str, str, CachedTeacher | None]] = [
        ("scratch", "scratch", None),
        ("label-smoothed", "kd", uniform),
        ("kd", "kd", cached),
        ("kd (cross-fitted)", "kd", xfit),
    ]
    plan += [(m, m, cached) for m in cfg.methods if m != "kd"]
    if "combined" in cfg.methods:
        plan.append(("combined (cross-fitted)", "combined", xfit))
    students: dict[str, torch.nn.Module] = {}
    for name, method, tgt in plan:
        secs = []
        for seed in cfg.seeds:
            res = fit(
                ctx.s_spec, data, replace(cfg.distill, method=method), cfg.student_fit, seed, tgt
            )
            out.preds.setdefault(name, []).append(predict_proba(res.net, data.test.x)["direction"])
            secs.append(res.seconds)
            if seed == cfg.seeds[0]:
                out.histories[name] = res.history
                students[name] = res.net
        out.seconds[name] = float(np.mean(secs))
        log(f"  {name}: {out.seconds[name]:.1f}s per seed")

    # CKA on evenly spaced test rows (seed-0 students vs the seed-0 teacher)
    rows = np.linspace(0, len(data.test) - 1, min(cfg.cka_rows, len(data.test))).astype(np.int64)
    xs = data.test.x[rows]
    _, tf = network_outputs(teacher, xs, range(n_t))
    t_grams = [centred_gram(tf[k].double().numpy()) for k in range(n_t)]
    out.cka_n = int(rows.size)
    for name, net in students.items():
        _, sf = network_outputs(net, xs, range(n_s))
        s_grams = [centred_gram(sf[k].double().numpy()) for k in range(n_s)]
        out.cka[name] = cka_matrix_from_grams(t_grams, s_grams)
        out.cka_debiased[name] = cka_matrix_from_grams(t_grams, s_grams, debiased=True)
    if is_last:
        ctx.last_teacher, ctx.last_data = teacher, data
        ctx.export_student = students.get(cfg.export_method)
        ctx.export_teacher_p = out.preds["teacher"][0]
        m = out.cka.get(cfg.export_method)
        if m is not None:
            ctx.export_cka = {f"t{a}-s{b}": float(m[a, b]) for a, b in out.pairs}
    return out


def pool(folds: Sequence[FoldOutput]) -> FoldOutput:
    """Concatenate the folds' test rows (they are consecutive, non-overlapping blocks)."""
    first = folds[0]
    pooled = FoldOutput(
        -1,
        np.concatenate([f.y for f in folds]),
        np.concatenate([f.times for f in folds]),
        np.concatenate([f.next_ret for f in folds]),
    )
    for name in first.preds:
        n_runs = len(first.preds[name])
        pooled.preds[name] = [
            np.concatenate([f.preds[name][i] for f in folds]) for i in range(n_runs)
        ]
    return pooled


def check_all(pooled: FoldOutput) -> None:
    """The leakage alarm on every model's pooled test predictions (seed-averaged)."""
    for name, runs in pooled.preds.items():
        leakage_check(name, pooled.y, np.mean(np.stack(runs), axis=0))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see `--help`)."""
    ap = argparse.ArgumentParser(prog="python -m training report", description=__doc__)
    ap.add_argument("--config", default="configs/report.toml", help="report TOML")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny slice, 1 epoch")
    ap.add_argument("--name", help="override report.name (reports/<name>/)")
    ap.add_argument("--out", help="override report.out_dir")
    ap.add_argument("--models-dir", help="override report.models_dir")
    ap.add_argument("--no-transfer", action="store_true", help="skip the transfer experiments")
    ap.add_argument("--no-export", action="store_true", help="do not export the student")
    args = ap.parse_args(argv)
    cfg_path = Path(args.config)
    cfg = load_report_config(cfg_path if cfg_path.exists() else None, quick=args.quick)
    over: dict[str, Any] = {}
    if args.name:
        over["name"] = args.name
    if args.out:
        over["out_dir"] = args.out
    if args.models_dir:
        over["models_dir"] = args.models_dir
    if args.no_export:
        over["export"] = False
    if args.no_transfer:
        over["transfer"] = replace(cfg.transfer, enabled=False)
    cfg = replace(cfg, **over)
    try:
        run_report(cfg, quick=args.quick)
    except LeakageAlarm as exc:
        print(f"LEAKAGE ALARM — report stopped: {exc}", file=sys.stderr)
        return 3
    return 0


def run_report(cfg: ReportConfig, quick: bool = False) -> Path:
    """Run everything and write reports/<name>/report.md; returns its path."""
    from training.report_write import write_report
    from training.transfer import run_transfer

    torch.set_num_threads(max(1, cfg.threads))
    t_start = time.perf_counter()
    out_dir = Path(cfg.out_dir) / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        stamp = f"[{time.perf_counter() - t_start:7.1f}s] {msg}"
        log_lines.append(stamp)
        print(stamp, flush=True)

    series = load_series(cfg.symbol, cfg.interval, cfg.last_bars)
    n_f = series.feats.shape[1]
    ctx = Context(
        cfg,
        log,
        default_spec(cfg.family, "teacher", n_f, fx.WINDOW),
        default_spec(cfg.family, "student", n_f, fx.WINDOW),
    )
    step = interval_ms(cfg.interval)
    folds = walk_forward_folds(
        series.times, step, cfg.folds, 1, cfg.embargo, cfg.test_fraction, cfg.val_fraction
    )
    for f in folds:
        check_no_leakage(f, series.times, step, 1, cfg.embargo)
    log(f"{cfg.symbol} {cfg.interval}m: {len(series.ends)} windows, {len(folds)} folds")
    outputs = [run_fold(ctx, series, f, i == len(folds) - 1) for i, f in enumerate(folds)]
    pooled = pool(outputs)
    try:
        check_all(pooled)
    except LeakageAlarm as exc:
        (out_dir / "report.md").write_text(
            f"# Report stopped: leakage alarm\n\n{exc}\n\nNo results are shown until the split "
            "is audited.\n"
        )
        raise
    transfer = run_transfer(ctx, series) if cfg.transfer.enabled else None
    exported = _export(ctx, series, pooled, outputs) if cfg.export else None
    params = {
        "teacher": count_parameters(_net(ctx.t_spec)),
        "student": count_parameters(_net(ctx.s_spec)),
    }
    path = write_report(
        cfg, ctx, outputs, pooled, transfer, exported, params, time.perf_counter() - t_start, quick
    )
    (out_dir / "run.log").write_text("\n".join(log_lines) + "\n")
    log(f"wrote {path}")
    return path


def _net(spec: NetSpec) -> torch.nn.Module:
    from training.networks import build_network

    return build_network(spec)


def _export(
    ctx: Context, series: Series, pooled: FoldOutput, outputs: Sequence[FoldOutput]
) -> dict[str, Any] | None:
    """Export the last fold's seed-0 student of `export_method` with its model card."""
    from service.model_card import NetworkSpec
    from training.export import export_student
    from training.metrics_eval import agreement, classification_report

    cfg, data, student = ctx.cfg, ctx.last_data, ctx.export_student
    if data is None or student is None or ctx.last_teacher is None:
        return None
    name = cfg.export_method
    last = outputs[-1]
    p = last.preds[name][0]
    rep: dict[str, Any] = dict(classification_report(last.y, p).as_dict())
    rep["agreement_with_teacher"] = (
        agreement(p, ctx.export_teacher_p) if ctx.export_teacher_p is not None else None
    )
    rep["cka"] = ctx.export_cka
    rep["cka_n"] = last.cka_n
    rep["teacher_test"] = classification_report(last.y, last.preds["teacher"][0]).as_dict()
    t0, t1, _ = last.spans["train"]
    v0, v1, _ = last.spans["val"]
    s0, s1, n_test = last.spans["test"]
    span = {
        "symbol": cfg.symbol,
        "interval": cfg.interval,
        "train_first_ms": t0,
        "train_last_ms": t1,
        "val_first_ms": v0,
        "val_last_ms": v1,
        "test_first_ms": s0,
        "test_last_ms": s1,
        "test_windows": n_test,
    }
    rng = np.random.default_rng(0)
    parity_x = data.test.x[
        np.sort(rng.choice(len(data.test), size=min(64, len(data.test)), replace=False))
    ]
    models = Path(cfg.models_dir)
    onnx_path = models / f"{cfg.export_name}.onnx"
    card, measured = export_student(
        student,
        onnx_path,
        parity_x,
        {
            "name": cfg.export_name,
            "symbols": [cfg.symbol],
            "interval": cfg.interval,
            "window": fx.WINDOW,
            "teacher": NetworkSpec(
                family=ctx.t_spec.family,
                arch=ctx.t_spec.to_dict(),
                params=count_parameters(_net(ctx.t_spec)),
            ),
            "student": NetworkSpec(
                family=ctx.s_spec.family,
                arch=ctx.s_spec.to_dict(),
                params=count_parameters(student),
            ),
            "distillation": {
                "method": name,
                "seed": cfg.seeds[0],
                "pairs": [list(p) for p in last.pairs],
                "config": replace(cfg.distill, method=name).__dict__
                | {"pairs": [list(p) for p in last.pairs]},
                "fit": cfg.student_fit.__dict__,
                "report": cfg.to_dict(),
            },
            "metrics": rep,
            "data_span": span,
        },
    )
    # the parity fixture for tests/service/test_committed_model.py (checked without torch)
    from training.export import ort_outputs, torch_outputs, write_parity_fixture

    tp = torch_outputs(student, parity_x)["prob_up"]
    if models.resolve() == (Path.cwd() / "models").resolve():
        write_parity_fixture(student, card, parity_x, "tests/fixtures/student_parity.npz")
    op = ort_outputs(onnx_path, parity_x)["prob_up"]
    return {
        "path": str(onnx_path),
        "card": card.model_dump(),
        **measured,
        "parity_check": float(np.abs(op - tp).max()),
    }
