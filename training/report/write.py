"""Writes reports/<name>/report.md (and its figures) from the analysed settings.

Reads only results and analyses (no training code): the experiment modules produce
`SettingResult`s, `report_analysis` turns them into numbers, this module prints them, and
`report_answers` writes the answers from the same numbers.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.model.card import HEADS
from training.report.analysis import SettingAnalysis, seed_mean
from training.report.answers import answers, fmt_p, size_label
from training.report.render import fmt_ms, plot_calibration

METRICS = (
    ("auc", "AUC"),
    ("log_loss", "log loss"),
    ("accuracy", "acc"),
    ("brier", "Brier"),
    ("ece", "ECE"),
)


def metrics_table(a: SettingAnalysis, head: str) -> str:
    head_row = ["model", "params", "seeds", *(h for _, h in METRICS)]
    lines = ["| " + " | ".join(head_row) + " |", "|" + "---|" * len(head_row)]
    for name, m in a.metrics[head].items():
        cells = [name, f"{a.result.params.get(name, 0):,}", str(len(m["auc"]))]
        cells += [fmt_ms(m[k]) for k, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(a: SettingAnalysis, head: str) -> str:
    lines = [
        "| A | B | ΔAUC [95 % CI] | p (AUC) | Holm p | Δlog loss | p (log loss) | Δacc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in a.comparisons:
        if c.head != head:
            continue
        t = c.test
        lines.append(
            f"| {t.a} | {t.b} | {t.d_auc:+.4f} [{t.auc_ci[0]:+.4f}, {t.auc_ci[1]:+.4f}] "
            f"| {fmt_p(t.p_auc)} | **{fmt_p(c.p_holm)}** | {t.d_logloss:+.5f} "
            f"| {fmt_p(t.p_logloss)} | {t.d_acc:+.4f} |"
        )
    return "\n".join(lines)


def gaps_table(a: SettingAnalysis, head: str) -> str:
    lines = [
        "| student | control | teacher | teacher − control AUC | student − control AUC "
        "| gap recovered [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for g in a.gaps:
        if g.head != head:
            continue
        r = g.result
        if r.ratio != r.ratio:
            share = "undefined (no gap)"
        elif r.n_valid:
            share = (
                f"{100 * r.ratio:+.0f} % [{100 * r.ci_low:+.0f} %, {100 * r.ci_high:+.0f} %]"
                + (f" ({r.n_valid}/{r.n_boot} resamples)" if r.n_valid < r.n_boot else "")
            )
        else:
            share = f"{100 * r.ratio:+.0f} % [no resample with a positive gap]"
        lines.append(
            f"| {g.student} | {g.scratch} | {g.teacher} | {r.teacher_gap:+.4f} "
            f"| {r.student_gap:+.4f} | {share} |"
        )
    return "\n".join(lines)


def per_group_table(a: SettingAnalysis, head: str) -> str:
    pg = a.per_group.get(head)
    if not pg:
        return ""
    groups = list(next(iter(pg.values())))
    lines = [
        "| model | " + " | ".join(groups) + " |",
        "|" + "---|" * (len(groups) + 1),
    ]
    for name, row in pg.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[g]:.4f}" for g in groups) + " |")
    return "\n".join(lines)


def plot_auc(a: SettingAnalysis, path: Path) -> Path:
    """AUC per model (mean ± std over seeds), one panel per head."""
    from training.report.render import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(HEADS), figsize=(11, 4.2))
    for ax, head in zip(axes, HEADS, strict=True):
        names = list(a.metrics[head])
        means = [np.mean(a.metrics[head][n]["auc"]) for n in names]
        stds = [np.std(a.metrics[head][n]["auc"]) for n in names]
        ax.barh(names, means, xerr=stds, color="tab:blue", alpha=0.7)
        lo = min(means) - 0.01
        ax.set_xlim(max(0.0, lo), max(means) + 0.01)
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_title(f"{a.result.key}: {head} head, test AUC", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slug(key: str) -> str:
    return key.replace("/", "_").lower()


def write_report(
    out: Path,
    cfg_dict: dict[str, Any],
    analyses: Sequence[SettingAnalysis],
    selection: dict[str, Any] | None,
    exported: dict[str, Any] | None,
    inference: str,
    seconds: float,
    command: str,
    quick: bool,
    threads: int,
    extra_answers: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> Path:
    """Render the markdown report (and PNGs) into `out` (`extra_answers`: bullets of the
    equivalence test and the locked evaluation; `sections`: their markdown, placed before the
    committed student's section)."""
    out.mkdir(parents=True, exist_ok=True)
    md: list[str] = []
    w = md.append
    w("# Apprentice report: distillation on two heads\n")
    if quick:
        w(
            "> **QUICK MODE** — a smoke test on tiny slices with a few batches; "
            "numbers mean nothing.\n"
        )
    w(
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')}; the whole run took "
        f"{seconds / 60:.1f} min on {platform.machine()} ({threads} torch thread(s)). Command: "
        f"`{command}`. The experiments, seeds, comparison families and the student-selection "
        "rule were fixed in `configs/report.toml` before the run.\n"
    )
    w(answers(analyses, selection, exported, extra=extra_answers))
    w("## Method\n")
    w(
        "- Labels (DESIGN §3): **direction** (next candle closes above its open) and "
        "**volatility** (next candle's range above the median range of the last 48 bars). "
        "Every network has both heads on one trunk and is trained on both losses."
    )
    w(
        "- Tests: every model is scored as its mean single model over its seeds (the tables' "
        "means; averaging students' probabilities would make an ensemble of students); ΔAUC "
        f"and Δlog loss by a paired hierarchical bootstrap ({cfg_dict['bootstrap']} resamples): "
        "each resample draws whole UTC days with replacement, the same days for both models, "
        "and each model's seeds with replacement (independently per model; a model with one "
        "run has no seed level), so the intervals include training randomness. The interval "
        "is the 2.5–97.5 % percentile of the resampled differences; p is two-sided from the "
        "bootstrap standard error (z = Δ / SE, normal approximation), so it is never floored "
        "at 1/(resamples + 1). Δacc untested. **Holm p** is the Holm–Bonferroni adjusted AUC p "
        "over the setting's pre-registered family of comparisons on that head (the family is "
        "listed in each table)."
    )
    w(
        "- Gap recovered = (student − control) / (teacher − control) in AUC, with a 95 % "
        "percentile CI from the same paired hierarchical resamples (resamples where the "
        "teacher does not beat the control are left out and counted)."
    )
    w(
        f"- Ensemble teacher: {len(cfg_dict['members'])} TCN members (seeds "
        f"{cfg_dict['members']}), output = their averaged probabilities; KD targets = the "
        f"averaged tempered probabilities (T = {cfg_dict['distill']['temperature']}); feature "
        f"targets from member {cfg_dict['feature_member']} (the `single teacher` row). "
        f"Students: seeds {cfg_dict['seeds']}.\n"
    )
    w(
        "- Standing controls (issue 29): `logistic regression` — one L2 logistic regression "
        "per head on the flattened window standardised with the training rows' per-feature "
        "statistics, trained on the student's own training windows, C from "
        "{1e-4, 1e-3, 1e-2, 0.1, 1} by validation AUC; `lightgbm` — LightGBM on five "
        "statistics per standardised channel (last value, last-4 mean, window mean and std, "
        "last-12 std), early-stopped on the validation log loss; `diverse teacher` — the mean "
        "of the logistic regression's, LightGBM's and the TCN ensemble's probabilities (a "
        "third each), distilled by KD (its tempered probabilities) into the same student; "
        "`linear student` — the flattened normalised window → both heads' logits, distilled "
        "by KD from the TCN ensemble.\n"
    )
    for a in analyses:
        r = a.result
        w(f"## {r.title}\n\n{r.description}\n")
        for head in HEADS:
            w(f"### {r.key} · {head} head\n")
            w(metrics_table(a, head) + "\n")
            w(comparisons_table(a, head) + "\n")
            if any(g.head == head for g in a.gaps):
                w(gaps_table(a, head) + "\n")
            pg = per_group_table(a, head)
            if pg:
                w(f"Per-symbol AUC ({head}, mean over seeds):\n\n" + pg + "\n")
        fig = plot_auc(a, out / f"auc_{_slug(r.key)}.png")
        w(f"![AUC {r.key}]({fig.name})\n")
        if r.key == "A":
            for i, head in enumerate(HEADS):
                names = [n for n in ("ensemble teacher", "scratch", "kd") if n in r.preds]
                p = plot_calibration(
                    r.y[:, i],
                    {n: seed_mean(r.preds[n], head) for n in names},
                    out / f"calibration_{head}.png",
                )
                w(f"![calibration {head}]({p.name})")
            w("")
    for sec in sections:
        if sec:
            w(sec)
    w("## The committed student\n")
    if selection is not None:
        w(
            "Rule (fixed in `[select]` before the run): of the pre-registered sizes, the "
            "smallest whose **validation** AUC on the "
            f"{cfg_dict['select']['head']} head is at least the ensemble teacher's minus "
            f"{cfg_dict['select']['tolerance']}; method `{cfg_dict['select']['method']}` from "
            "an ensemble teacher trained on the same windows (A's member seeds and recipe), "
            "setting A's last fold: "
            f"{selection.get('train_windows', 0):,} training and "
            f"{selection.get('val_windows', 0):,} validation windows (every "
            f"{cfg_dict['select']['train_stride'] or cfg_dict['pooled']['train_stride']}. and "
            f"{cfg_dict['select']['val_stride'] or cfg_dict['pooled']['val_stride']}.; A's "
            f"runs read every {cfg_dict['pooled']['train_stride']}.)"
            + (
                "; every selection fit (teacher members and candidates) runs its whole "
                "schedule and keeps its best validation check.\n"
                if cfg_dict["select"]["whole_schedule"]
                else ".\n"
            )
        )
        w("| size | params | val AUC direction | val AUC volatility | best check (step) | chosen |")
        w("|---|---|---|---|---|---|")
        w(
            f"| ensemble teacher | – | {selection['teacher_val_auc']['direction']:.4f} "
            f"| {selection['teacher_val_auc']['volatility']:.4f} | | |"
        )
        for c in selection["candidates"]:
            mark = "**yes**" if c["channels"] == selection["chosen"] else ""
            w(
                f"| {size_label(c)} | {c['params']:,} | {c['val_auc']['direction']:.4f} "
                f"| {c['val_auc']['volatility']:.4f} | {c['best_step']} of {c['steps']} "
                f"| {mark} |"
            )
        w("")
    if exported:
        card = exported["card"]
        m = card["metrics"]
        w(
            f"`{exported['path']}` (+ `.json` card): symbols {', '.join(card['symbols'])}; "
            f"sha256 `{card['sha256'][:16]}…`, opset {card['opset']}, "
            f"{card['student']['params']:,} parameters; onnxruntime vs torch max |Δ| "
            f"{exported['parity_max_abs']:.2e}; single-row onnxruntime latency "
            f"{exported['latency_us']:.1f} µs.\n"
        )
        w("| head | accuracy | log loss | AUC | agreement with teacher | teacher AUC |")
        w("|---|---|---|---|---|---|")
        for head in HEADS:
            mh, th = m[head], m["teacher_test"][head]
            w(
                f"| {head} | {mh['accuracy']:.4f} | {mh['log_loss']:.4f} | {mh['auc']:.4f} "
                f"| {mh['agreement_with_teacher']:.3f} | {th['auc']:.4f} |"
            )
        w(f"\nTest bars: the last fold's {int(m['volatility']['n'])} pooled test windows.\n")
    else:
        w("Not exported in this run.\n")
    w(inference)
    w("## Reproduce\n")
    w(f"```\n{command}\n```\n")
    w("Resolved report config:\n")
    w("```json\n" + json.dumps(cfg_dict, indent=1) + "\n```\n")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def results_json(analyses: Sequence[SettingAnalysis]) -> dict[str, Any]:
    """The tables' numbers as JSON (results.json beside the report)."""
    out: dict[str, Any] = {}
    for a in analyses:
        out[a.result.key] = {
            "metrics": a.metrics,
            "params": a.result.params,
            "comparisons": [
                {
                    "head": c.head,
                    "a": c.test.a,
                    "b": c.test.b,
                    "d_auc": c.test.d_auc,
                    "auc_ci": list(c.test.auc_ci),
                    "p_auc": c.test.p_auc,
                    "p_holm": c.p_holm,
                    "d_log_loss": c.test.d_logloss,
                    "p_log_loss": c.test.p_logloss,
                }
                for c in a.comparisons
            ],
            "gaps": [
                {
                    "head": g.head,
                    "student": g.student,
                    "control": g.scratch,
                    "teacher": g.teacher,
                    "ratio": g.result.ratio,
                    "ci": [g.result.ci_low, g.result.ci_high],
                    "teacher_gap": g.result.teacher_gap,
                }
                for g in a.gaps
            ],
            "per_group": a.per_group,
        }
    return out
