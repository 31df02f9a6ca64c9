"""`python -m training report`: the pre-registered distillation study and the committed student.

Reads one way, top to bottom: config → the plan's size (one progress bar over every training
run) → A pooled (training.experiments.pooled) → the committed student's selection on A's
validation split (training.experiments.selection) → B cross-asset
(training.experiments.cross_asset) → C cross-timeframe
(training.experiments.cross_timeframe) → D cross-domain (training.experiments.cross_domain)
→ numbers (training.report.analysis) → reports/<name>/report.md (training.report.write) →
the exported student in models/ and the ensemble teacher in runs/train/teacher/
(training.report.export). Each experiment module only trains and predicts; nothing below
imports this module.

`--quick` runs the same code on short slices with a few batches per run (minutes); its
report is marked QUICK MODE and it exports nowhere unless told to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.experiments import cross_asset as exp_cross_asset
from training.experiments import cross_domain as exp_cross_domain
from training.experiments import cross_timeframe as exp_cross_timeframe
from training.experiments import pooled as exp_pooled
from training.experiments import selection as exp_select
from training.experiments.common import Env
from training.experiments.config import ReportConfig, load_report_config
from training.experiments.results import SettingResult
from training.progress import Progress
from training.report.analysis import analyse, seed_mean
from training.report.equivalence import answer as ft_answer
from training.report.equivalence import feature_test
from training.report.equivalence import render as ft_render
from training.report.locked import answer_line as locked_answer
from training.report.locked import render as locked_render
from training.report.locked import run_locked
from training.scoring.evaluate import LeakageAlarm, leakage_check

LEAKAGE_MIN_ROWS = 2000  # at n = 2000 the alarm's 0.56 accuracy is ≈ 5 standard errors


def plan_size(cfg: ReportConfig) -> int:
    """Training runs in the whole plan (every module counts its own)."""
    return (
        exp_pooled.n_runs(cfg)
        + exp_select.n_runs(cfg)
        + exp_cross_asset.n_runs(cfg)
        + exp_cross_timeframe.n_runs(cfg)
        + exp_cross_domain.n_runs(cfg)
    )


def check_leakage(res: SettingResult) -> None:
    """The leakage alarm on the direction head (no signal expected there: AUC ≥ 0.58 or
    accuracy ≥ 56 % means a split leaks). The volatility head has real signal and is not
    checked this way. Settings with fewer than `LEAKAGE_MIN_ROWS` test rows (quick mode) are
    not checked: there, 0.56 accuracy is within chance (SE ≈ 0.5/√n)."""
    if len(res.y) < LEAKAGE_MIN_ROWS:
        return
    for name, runs in res.preds.items():
        leakage_check(f"{res.key}: {name}", res.y[:, 0], seed_mean(runs, "direction"))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see `--help`)."""
    ap = argparse.ArgumentParser(prog="python -m training report", description=__doc__)
    ap.add_argument("--config", default="configs/report.toml", help="report TOML")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test in minutes: short slices, one epoch of a few batches, 1 seed; "
        "writes reports/<name>-quick/ and exports nothing unless --export is given",
    )
    ap.add_argument("--name", help="override report.name (reports/<name>/)")
    ap.add_argument("--out", help="override report.out_dir")
    ap.add_argument("--models-dir", help="override report.models_dir")
    ap.add_argument("--teacher-dir", help="override report.teacher_dir")
    ap.add_argument("--export", action="store_true", help="export even in --quick mode")
    ap.add_argument("--no-export", action="store_true", help="do not export the student")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (log only)")
    args = ap.parse_args(argv)
    cfg_path = Path(args.config)
    cfg = load_report_config(cfg_path if cfg_path.exists() else None, quick=args.quick)
    over: dict[str, Any] = {}
    if args.quick:
        over |= {"name": f"{cfg.name}-quick", "export": bool(args.export)}
    for key, val in (
        ("name", args.name),
        ("out_dir", args.out),
        ("models_dir", args.models_dir),
        ("teacher_dir", args.teacher_dir),
    ):
        if val:
            over[key] = val
    if args.no_export:
        over["export"] = False
    if args.no_progress:
        over["progress"] = False
    cfg = replace(cfg, **over)
    command = (
        "python -m training report --config " + str(cfg_path) + (" --quick" if args.quick else "")
    )
    try:
        run_report(cfg, quick=args.quick, command=command)
    except LeakageAlarm as exc:
        print(f"LEAKAGE ALARM — report stopped: {exc}", file=sys.stderr)
        return 3
    return 0


def run_report(cfg: ReportConfig, quick: bool = False, command: str = "make train") -> Path:
    """Run the whole plan and write reports/<name>/report.md; returns its path."""
    from training.report.export import export_committed, inference_section, save_teacher
    from training.report.write import results_json, write_report

    torch.set_num_threads(max(1, cfg.threads))
    out_dir = Path(cfg.out_dir) / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    total = plan_size(cfg)
    with Progress(total, out_dir / "run.log", cfg.progress) as prog:
        env = Env.make(cfg, prog)
        prog.log(f"plan: {total} training runs ({'quick' if quick else 'full'} mode)")
        results: list[SettingResult] = []
        selection = exported = None
        a = None
        if cfg.pooled.enabled:
            a = exp_pooled.run(env)
            results.append(a.result)
            check_leakage(a.result)
            sel = exp_select.run(env, a)
            selection = sel.as_dict()
            if cfg.export:
                exported = export_committed(env, sel)
                save_teacher(env, sel)
        d_res: SettingResult | None = None
        if a is not None and cfg.cross_asset.enabled:
            bs, kept = exp_cross_asset.run(env, a)
            results += bs
            dd = cfg.cross_domain
            if dd.enabled and dd.target in kept:
                b = next(r for r in bs if r.key == f"B/{dd.target}")
                d_res = exp_cross_domain.run(env, b, kept[dd.target])
        if cfg.cross_timeframe.enabled:
            results.append(exp_cross_timeframe.run(env))
        if d_res is not None:
            results.append(d_res)
        for r in results:
            check_leakage(r)
        prog.log("analysing")
        analyses = [analyse(r, cfg.bootstrap) for r in results]
        ft = feature_test(
            [r for r in results if r.key.startswith("B/")],
            cfg.cross_asset.feature_test,
            cfg.cross_asset.margin,
            cfg.bootstrap,
        )
        extra = [ft_answer(ft)]
        sections = [ft_render(ft)]
        if exported is not None:
            prog.log("the locked evaluation (once, on bars no selection has seen)")
            locked = run_locked(cfg, exported, prog.log)
            extra.append(locked_answer(locked))
            sections.append(locked_render(locked))
        inference = inference_section(env, selection)
        path = write_report(
            out_dir,
            cfg.to_dict(),
            analyses,
            selection,
            exported,
            inference,
            prog.seconds,
            command,
            quick,
            cfg.threads,
            extra,
            sections,
        )
        (out_dir / "results.json").write_text(
            json.dumps(
                _plain(results_json(analyses) | {"selection": selection, "feature_test": ft}),
                indent=1,
            )
        )
        prog.log(f"wrote {path} ({prog.done}/{total} runs, {prog.seconds / 60:.1f} min)")
    return path


def _plain(x: Any) -> Any:
    """JSON-safe copy (numpy scalars → float, NaN → None)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and x != x:
        return None
    return x
