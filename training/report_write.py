"""Writes reports/<name>/report.md and its figures from the report run's results."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.analysis import plot_cka_matrix
from training.backtest import backtest
from training.metrics_eval import classification_report
from training.report_render import (
    Paired,
    ensemble,
    metrics_table,
    paired,
    paired_table,
    plot_calibration,
    plot_curves,
    plot_equity,
    verdict,
)
from training.stats import day_blocks

if TYPE_CHECKING:
    from training.report import Context, FoldOutput
    from training.report_config import ReportConfig
    from training.transfer import TransferResult

BASELINES = ("majority", "last-return sign")
CONTROLS = ("scratch", "label-smoothed", "kd")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _students(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in (*BASELINES, "teacher")]


def _gap(raw: dict[str, dict[str, list[float]]], name: str, metric: str) -> str:
    t = float(np.mean(raw["teacher"][metric]))
    s = float(np.mean(raw["scratch"][metric]))
    m = float(np.mean(raw[name][metric]))
    if metric == "log_loss":
        t, s, m = -t, -s, -m
    if t - s <= 1e-9:
        return "n/a (teacher ≤ scratch)"
    return f"{100.0 * (m - s) / (t - s):+.0f} %"


def write_report(
    cfg: ReportConfig,
    ctx: Context,
    folds: Sequence[FoldOutput],
    pooled: FoldOutput,
    transfer: list[TransferResult] | None,
    exported: dict[str, Any] | None,
    params: dict[str, int],
    seconds: float,
    quick: bool,
) -> Path:
    """Render the markdown report (and PNGs) into reports/<name>/."""
    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    y = pooled.y
    blocks = day_blocks(pooled.times)
    names = list(pooled.preds)
    students = _students(names)
    teacher0 = pooled.preds["teacher"][0]
    pcount = {n: params["student"] for n in students} | {"teacher": params["teacher"]}
    md: list[str] = []
    w = md.append
    w(f"# Apprentice report: {cfg.name}\n")
    if quick:
        w("> **QUICK MODE** — a smoke test on a tiny slice with one epoch; numbers mean nothing.\n")
    w(
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} in {seconds / 60:.1f} min "
        f"on {platform.machine()} ({cfg.threads} torch threads). Command: "
        f"`python -m training report --config configs/report.toml{' --quick' if quick else ''}`.\n"
    )

    # A person's reading of the tables lives in answers.md beside the report, so that a
    # rerun (make train) keeps it; the tables below are regenerated every time.
    answers = out / "answers.md"
    if answers.exists() and not quick:
        w(answers.read_text().rstrip() + "\n")
        w(
            "_(The section above is the hand-written reading kept in `answers.md`; the run "
            "is deterministic, so its numbers should match the regenerated tables below — "
            "update it if they do not.)_\n"
        )

    # ----------------------------------------------------------------- setup
    w("## Setup\n")
    w(
        f"- Data: bundled Bybit {cfg.symbol} {cfg.interval}-minute klines, "
        f"{len(pooled.y)} pooled test windows over {len(folds)} walk-forward folds; label = next "
        "candle closes above its open; input = 32 bars × 12 features (DESIGN §3)."
    )
    w(
        f"- Walk-forward: expanding training window; before every validation and test block a "
        f"purge of the 1-bar label horizon plus an embargo of {cfg.embargo} bars (one input "
        "window); normalisation statistics from each fold's training rows only; every teacher "
        "trained only on its fold's training period; early stopping on validation log loss."
    )
    w(
        f"- Teacher `{ctx.t_spec.family}` channels {list(ctx.t_spec.channels)}: "
        f"{params['teacher']} parameters; student channels {list(ctx.s_spec.channels)}: "
        f"{params['student']} parameters ({params['teacher'] / params['student']:.0f}× smaller)."
    )
    w(
        f"- Seeds: students {list(cfg.seeds)}, teachers {list(cfg.teacher_seeds)}; students distil "
        "from the seed-0 teacher of their fold. Loss weights α "
        f"{cfg.distill.alpha}, β {cfg.distill.beta}, γ {list(cfg.distill.gammas)}, T "
        f"{cfg.distill.temperature}; layer pairs (teacher, student) {folds[0].pairs}."
    )
    w(
        "- Controls: `majority` (training up-rate), `last-return sign` (P(up | sign of the last "
        "return) measured on training data), `scratch` (task loss only), `label-smoothed` (the "
        "KD objective with a *uniform* teacher: α·CE + β·T²·KL(½,½ ‖ softmax(s/T)) — exactly "
        "what KD would do if the teacher knew nothing), `kd (cross-fitted)` and `combined "
        "(cross-fitted)` (teacher targets on the training rows come from two half-period "
        "teachers, each labelling the half it never saw; features still from the main teacher)."
    )
    w(
        "- Paired tests use the seed-averaged probabilities of each model on the same bars: "
        "McNemar (exact binomial on the disagreements) for accuracy, a day-block bootstrap "
        f"({cfg.bootstrap} resamples of whole UTC days) for ΔAUC and Δlog loss.\n"
    )
    w("| fold | train | val | test |\n|---|---|---|---|")
    for f in folds:
        cells = [
            f"{_day(a)} → {_day(b)} ({n})"
            for a, b, n in (f.spans[k] for k in ("train", "val", "test"))
        ]
        w(f"| {f.index} | " + " | ".join(cells) + " |")
    w("")
    w(
        "Leakage alarm: passed — no model reaches accuracy ≥ 56 % or AUC ≥ 0.58 on the pooled "
        "test bars (the report would have stopped).\n"
    )

    # ---------------------------------------------------------------- results
    w("## Results on the pooled test folds (mean ± std over seeds)\n")
    table, raw = metrics_table(y, pooled.preds, teacher0, pcount)
    w(table + "\n")
    w("Agreement is with the seed-0 teacher's direction on each bar.\n")
    w("### Per fold (AUC / accuracy, mean over seeds)\n")
    head = (
        "| model | "
        + " | ".join(f"fold {f.index} AUC | fold {f.index} acc" for f in folds)
        + " | AUC spread (max−min) |"
    )
    w(head)
    w("|" + "---|" * (2 * len(folds) + 2))
    for n in names:
        cells, aucs = [], []
        for f in folds:
            reps = [classification_report(f.y, p) for p in f.preds[n]]
            auc = float(np.mean([r.auc for r in reps]))
            aucs.append(auc)
            cells.append(f"{auc:.4f} | {np.mean([r.accuracy for r in reps]):.4f}")
        w(f"| {n} | " + " | ".join(cells) + f" | {max(aucs) - min(aucs):.4f} |")
    w("")

    # ---------------------------------------------------------- paired tests
    ens = {n: ensemble(r) for n, r in pooled.preds.items()}

    def cmp(a: str, b: str) -> Paired:
        return paired(y, blocks, a, ens[a], b, ens[b], cfg.bootstrap)

    w("## Does the teacher beat the baselines?\n")
    t_rows = [cmp("teacher", b) for b in (*BASELINES, "scratch") if b in ens]
    w(paired_table(t_rows) + "\n")
    for r in t_rows:
        w(f"- {verdict(r)}.")
    w("")
    w("## Does each student beat scratch, the label-smoothed control and plain KD?\n")
    rows: list[Paired] = []
    for n in students:
        for ref in CONTROLS:
            below = {"kd": ("scratch", "label-smoothed"), "label-smoothed": ("scratch",)}
            if n != ref and ref in ens and n not in below.get(ref, ()):
                rows.append(cmp(n, ref))
    w(paired_table(rows) + "\n")
    w("In words (p < 0.05):\n")
    for r in rows:
        w(f"- {verdict(r)}.")
    w("")
    feature_methods = [
        n for n in students if n not in ("scratch", "label-smoothed", "kd", "kd (cross-fitted)")
    ]
    beaten = [
        r.a
        for r in rows
        if r.b == "scratch"
        and r.a in feature_methods
        and "beats" in verdict(r)
        and "does not" not in verdict(r)
    ]
    not_beaten = [m for m in feature_methods if m not in beaten]
    w("### Summary\n")
    if not_beaten:
        w(
            "**Feature distillation does not beat the scratch student** for: "
            f"{', '.join(not_beaten)} "
            "(no metric significantly better at p < 0.05)."
        )
    if beaten:
        w(f"Significantly better than scratch on at least one metric: {', '.join(beaten)}.")
    w("")

    # -------------------------------------------------------- gap recovered
    w("## How much of the teacher-minus-scratch gap is recovered?\n")
    w("(student − scratch) / (teacher − scratch), on the seed means of the pooled metrics.\n")
    w("| student | AUC gap recovered | accuracy gap recovered | log-loss gap recovered |")
    w("|---|---|---|---|")
    for n in students:
        if n != "scratch":
            gaps = [_gap(raw, n, k) for k in ("auc", "accuracy", "log_loss")]
            w(f"| {n} | " + " | ".join(gaps) + " |")
    t_auc, s_auc = np.mean(raw["teacher"]["auc"]), np.mean(raw["scratch"]["auc"])
    best = max(students, key=lambda n: float(np.mean(raw[n]["auc"])))
    w(
        f"\nTeacher AUC {t_auc:.4f} vs scratch {s_auc:.4f}; best student by AUC: **{best}** "
        f"({np.mean(raw[best]['auc']):.4f}). When the teacher does not beat scratch, there is no "
        "gap to recover and the ratio is not defined.\n"
    )

    # ------------------------------------------------------------------ CKA
    w("## Feature similarity (linear CKA, seed-0 students vs the seed-0 teacher)\n")
    last = folds[-1]
    w(
        f"N = {last.cka_n} evenly spaced test windows per fold; conv features (C, T) flattened to "
        "C·T; biased CKA is inflated on small N, so the debiased estimator is shown beside it. "
        "Values are the mean over folds.\n"
    )
    pairs = last.pairs
    w(
        "| student | "
        + " | ".join(f"t{a}↔s{b} CKA (debiased)" for a, b in pairs)
        + " | best-matching teacher layer per student layer |"
    )
    w("|" + "---|" * (len(pairs) + 2))
    for n in students:
        if n not in last.cka:
            continue
        mats = np.mean([f.cka[n] for f in folds if n in f.cka], axis=0)
        debs = np.mean([f.cka_debiased[n] for f in folds if n in f.cka_debiased], axis=0)
        cells = [f"{mats[a, b]:.3f} ({debs[a, b]:.3f})" for a, b in pairs]
        bestl = ", ".join(f"s{j}→t{int(np.argmax(mats[:, j]))}" for j in range(mats.shape[1]))
        w(f"| {n} | " + " | ".join(cells) + f" | {bestl} |")
    w("")
    for n in ("scratch", cfg.export_method):
        if n in last.cka:
            fig = plot_cka_matrix(
                last.cka[n],
                out / f"cka_{n.replace(' ', '_')}.png",
                f"teacher × {n} (fold {last.index})",
                last.cka_n,
            )
            w(f"![CKA {n}]({fig.name})")
    w("")

    # ------------------------------------------------------------- backtest
    w("## Fee-aware backtest (pooled test folds, seed-averaged signals)\n")
    w(
        "Signal at bar t's close sets the position over bar t+1 (close-to-close return); "
        "Bybit taker fee 5.5 bps per side on every change of position. Two rules: always in "
        f"the market (long if P(up) > 0.5 else short) and a band (flat inside 0.5 ± "
        f"{cfg.backtest_band}). Break-even cost = the round-trip cost at which net P&L is 0.\n"
    )
    w(
        "| model | rule | total return | Sharpe (ann.) | max drawdown | hit rate | exposure "
        "| turnover / bar | break-even bps / round trip |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    curves: dict[str, np.ndarray] = {}
    bt_models = [
        n
        for n in ("teacher", "last-return sign", "scratch", "kd", cfg.export_method, best)
        if n in ens
    ]
    for n in dict.fromkeys(bt_models):
        for rule, (up, lo) in (
            ("always in", (0.5, 0.5)),
            ("band", (0.5 + cfg.backtest_band, 0.5 - cfg.backtest_band)),
        ):
            res, eq = backtest(ens[n], pooled.next_ret, up, lo)
            if rule == "always in":
                curves[n] = eq
            w(
                f"| {n} | {rule} | {res.total_return:+.2%} | {res.sharpe:+.2f} "
                f"| {res.max_drawdown:.2%} | {res.hit_rate:.3f} | {res.exposure:.2f} "
                f"| {res.turnover:.3f} | {res.break_even_bps_round_trip:+.2f} |"
            )
    plot_equity(curves, out / "equity.png", "net equity, always-in rule, 5.5 bps taker fee")
    w("\n![equity](equity.png)\n")
    w(
        "A round trip costs 11 bps in taker fees; any break-even figure below that loses money "
        "after fees, whatever the accuracy.\n"
    )

    # ------------------------------------------------------- curves/calib
    w("## Training curves and calibration\n")
    plot_curves(
        last.histories,
        out / "curves.png",
        f"validation log loss per epoch, fold {last.index}, seed {cfg.seeds[0]}",
    )
    plot_calibration(
        y,
        {n: ens[n] for n in ("teacher", "scratch", "kd", cfg.export_method) if n in ens},
        out / "calibration.png",
    )
    w("![curves](curves.png) ![calibration](calibration.png)\n")
    w(
        "Mean training seconds per run (last fold): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in last.seconds.items())
        + ".\n"
    )

    # ------------------------------------------------------------- transfer
    w("## Transfer experiments\n")
    if not transfer:
        w("Not run (disabled or data missing).\n")
    for tr in transfer or []:
        w(f"### {tr.title}\n\n{tr.description}\n")
        tb, _ = metrics_table(tr.y, tr.preds, None, {})
        w(tb + "\n")
        tb_blocks = day_blocks(tr.times)
        tens = {n: ensemble(r) for n, r in tr.preds.items()}
        prs = [
            paired(tr.y, tb_blocks, n, tens[n], tr.reference, tens[tr.reference], cfg.bootstrap)
            for n in tens
            if n != tr.reference and "teacher" not in n
        ]
        w(paired_table(prs) + "\n")
        for r in prs:
            w(f"- {verdict(r)}.")
        for k, v in tr.notes.items():
            w(f"\n{k}: `{json.dumps(v)}`")
        w("")

    # ------------------------------------------------------------- export
    w("## The exported student\n")
    if exported:
        card = exported["card"]
        m = card["metrics"]
        span = card["data_span"]
        w(
            f"`{exported['path']}` (+ `.json` card): method `{cfg.export_method}`, "
            f"seed {cfg.seeds[0]}, last fold (trained on data up to {_day(span['val_last_ms'])}, "
            f"tested on {_day(span['test_first_ms'])} → {_day(span['test_last_ms'])}). "
            f"sha256 `{card['sha256'][:16]}…`, opset {card['opset']}, "
            f"{card['student']['params']} parameters.\n"
        )
        w(
            f"- Test accuracy {m['accuracy']:.4f}, AUC {m['auc']:.4f}, "
            f"log loss {m['log_loss']:.4f}; agreement with the teacher's direction "
            f"{m['agreement_with_teacher']:.3f} on {int(m['n'])} bars."
        )
        w(f"- CKA per layer pair (N={m['cka_n']}): {json.dumps(m['cka'])}.")
        w(
            f"- onnxruntime vs torch max |Δ| = {exported['parity_max_abs']:.2e} on a fixed "
            "batch of 64; "
            f"single-row onnxruntime latency (1 thread, median) {exported['latency_us']:.1f} µs."
        )
    else:
        w("Not exported in this run.")
    w("")
    onnx_file = Path(exported["path"]) if exported else None
    w(inference_section(ctx.t_spec, ctx.s_spec, onnx_file))
    w("## Reproduce\n")
    w("```\nmake train        # = python -m training report --config configs/report.toml\n```")
    w("\nResolved report config:\n")
    w("```json\n" + json.dumps(cfg.to_dict(), indent=1) + "\n```\n")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"pooled": {n: {k: list(map(float, v)) for k, v in d.items()} for n, d in raw.items()}},
            indent=1,
        )
    )
    return path


def inference_section(t_spec: Any, s_spec: Any, student_onnx: Path | None) -> str:
    """Markdown: parameter counts and single-row inference time of teacher and student.

    Latency does not depend on the weights, so freshly built networks are timed (torch, one
    thread) and both are exported to ONNX in a temporary folder for onnxruntime (one thread).
    """
    import tempfile
    import time

    import torch

    from training.export import export_onnx, ort_latency_us
    from training.networks import build_network, count_parameters

    torch.set_num_threads(1)
    lines = [
        "## Inference cost (single row, one thread, median)\n",
        "| network | parameters | torch µs / row | onnxruntime µs / row |",
        "|---|---|---|---|",
    ]
    x = torch.zeros(1, t_spec.n_features, t_spec.window)
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in (("teacher", t_spec), ("student", s_spec)):
            net = build_network(spec).eval()
            with torch.no_grad():
                for _ in range(50):
                    net(x)
                times = []
                for _ in range(500):
                    t0 = time.perf_counter_ns()
                    net(x)
                    times.append(time.perf_counter_ns() - t0)
            path = Path(tmp) / f"{label}.onnx"
            if label == "student" and student_onnx is not None and student_onnx.exists():
                path = student_onnx
            else:
                export_onnx(net, path, spec.n_features, spec.window)
            ort_us = ort_latency_us(path, x.numpy())
            torch_us = np.median(times) / 1e3
            lines.append(f"| {label} | {count_parameters(net)} | {torch_us:.1f} | {ort_us:.1f} |")
    lines.append(
        "\nMeasured on the machine that ran the report, which other jobs may share; "
        "`make bench` gives the service-side figures.\n"
    )
    return "\n".join(lines) + "\n"
