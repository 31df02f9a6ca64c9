"""Summaries, paired comparisons, markdown tables and plots for the report.

Predictions arrive as `{model name: [p_seed0, p_seed1, ...]}` on one common set of test
rows. Metrics are computed per seed (mean ± std in the tables); paired tests compare the
seed-averaged probabilities of two models (each model as the ensemble of its seeds), so one
row of a test stands for one bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.scoring.metrics import agreement, classification_report
from training.scoring.stats import block_bootstrap, mcnemar

P = NDArray[np.float64]
TABLE_METRICS = (
    ("accuracy", "acc"),
    ("balanced_accuracy", "bal acc"),
    ("mcc", "MCC"),
    ("log_loss", "log loss"),
    ("brier", "Brier"),
    ("auc", "AUC"),
    ("ece", "ECE"),
    ("top10_accuracy", "top-10% acc"),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std()) if a.size > 1 else 0.0


def fmt_ms(values: Sequence[float], digits: int = 4) -> str:
    """ "0.5123 ± 0.0021" (± only with more than one value)."""
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def seed_metrics(
    y: NDArray[np.int64], runs: Sequence[P], teacher: P | None
) -> dict[str, list[float]]:
    """Every metric (and teacher agreement) for each seed's predictions."""
    out: dict[str, list[float]] = {}
    for p in runs:
        rep = classification_report(y, p).as_dict()
        if teacher is not None:
            rep["agreement"] = agreement(p, teacher)
        for k, v in rep.items():
            out.setdefault(k, []).append(v)
    return out


def metrics_table(
    y: NDArray[np.int64], preds: dict[str, list[P]], teacher: P | None, params: dict[str, int]
) -> tuple[str, dict[str, dict[str, list[float]]]]:
    """Markdown table of every model's metrics (mean ± std over seeds) and the raw numbers."""
    head = ["model", "params", "seeds", *(h for _, h in TABLE_METRICS), "top-10% cov"]
    if teacher is not None:
        head.append("agree w/ teacher")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    raw: dict[str, dict[str, list[float]]] = {}
    for name, runs in preds.items():
        m = seed_metrics(y, runs, teacher)
        raw[name] = m
        cells = [name, str(params.get(name, "")) or "–", str(len(runs))]
        cells += [fmt_ms(m[k]) for k, _ in TABLE_METRICS]
        cells.append(fmt_ms(m["top10_coverage"], 3))
        if teacher is not None:
            cells.append(fmt_ms(m["agreement"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), raw


@dataclass(frozen=True)
class Paired:
    """Paired comparison of model A against B on the same bars."""

    a: str
    b: str
    d_acc: float
    p_mcnemar: float
    d_auc: float
    auc_ci: tuple[float, float]
    p_auc: float
    d_logloss: float
    p_logloss: float


def paired(
    y: NDArray[np.int64],
    blocks: NDArray[np.int64],
    a: str,
    pa: P,
    b: str,
    pb: P,
    n_boot: int,
) -> Paired:
    """McNemar on the directions plus day-block bootstraps of ΔAUC and Δlog loss (A − B)."""
    mc = mcnemar(y, pa, pb)
    ra = block_bootstrap(y, pa, pb, blocks, "auc", n_boot=n_boot)
    rl = block_bootstrap(y, pa, pb, blocks, "log_loss", n_boot=n_boot)
    d_acc = float(np.mean((pa > 0.5) == y) - np.mean((pb > 0.5) == y))
    return Paired(
        a, b, d_acc, mc.p_value, ra.diff, (ra.ci_low, ra.ci_high), ra.p_value, rl.diff, rl.p_value
    )


def paired_table(rows: Sequence[Paired]) -> str:
    """Markdown table of paired comparisons."""
    lines = [
        "| A | B | Δacc | McNemar p | ΔAUC [95% CI] | p (AUC) | Δlog loss | p (log loss) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.a} | {r.b} | {r.d_acc:+.4f} | {r.p_mcnemar:.3f} | "
            f"{r.d_auc:+.4f} [{r.auc_ci[0]:+.4f}, {r.auc_ci[1]:+.4f}] | {r.p_auc:.3f} | "
            f"{r.d_logloss:+.5f} | {r.p_logloss:.3f} |"
        )
    return "\n".join(lines)


def verdict(r: Paired, alpha: float = 0.05) -> str:
    """Plain words: does A beat B on accuracy, AUC and log loss at level alpha?"""
    wins = []
    if r.d_acc > 0 and r.p_mcnemar < alpha:
        wins.append("accuracy")
    if r.d_auc > 0 and r.p_auc < alpha:
        wins.append("AUC")
    if r.d_logloss < 0 and r.p_logloss < alpha:
        wins.append("log loss")
    losses = []
    if r.d_acc < 0 and r.p_mcnemar < alpha:
        losses.append("accuracy")
    if r.d_auc < 0 and r.p_auc < alpha:
        losses.append("AUC")
    if r.d_logloss > 0 and r.p_logloss < alpha:
        losses.append("log loss")
    if not wins and not losses:
        return f"**{r.a} does not beat {r.b}** (no significant difference at p < {alpha})"
    parts = []
    if wins:
        parts.append(f"{r.a} beats {r.b} on {', '.join(wins)}")
    if losses:
        parts.append(f"{r.a} is **worse** than {r.b} on {', '.join(losses)}")
    rest = {"accuracy", "AUC", "log loss"} - set(wins) - set(losses)
    if rest:
        parts.append(f"no significant difference on {', '.join(sorted(rest))}")
    return "; ".join(parts) + f" (p < {alpha})"


def ensemble(runs: Sequence[P]) -> P:
    """Seed-averaged probabilities."""
    out: P = np.mean(np.stack(runs), axis=0)
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(histories: dict[str, list[dict[str, float]]], path: Path, title: str) -> Path:
    """Validation log loss per epoch for each model (one seed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, hist) in enumerate(histories.items()):
        ax.plot(
            [h["epoch"] + 1 for h in hist],
            [h["val_log_loss"] for h in hist],
            marker="o" if i < 10 else "s",  # the default colour cycle repeats after 10
            ls="-" if i < 10 else "--",
            ms=3,
            label=name,
        )
    ax.axhline(np.log(2), color="k", lw=0.8, ls="--", label="ln 2 (coin flip)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation log loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_equity(curves: dict[str, P], path: Path, title: str) -> Path:
    """Net equity curves (fees included) of several signals over the same bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, eq in curves.items():
        ax.plot(eq, lw=1, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("test bar (folds concatenated)")
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(y: NDArray[np.int64], preds: dict[str, P], path: Path) -> Path:
    """Reliability diagram (10 equal-width bins) of seed-averaged probabilities."""
    from training.scoring.metrics import calibration_bins

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, p in preds.items():
        b = calibration_bins(y, p, 20)
        ax.plot(b["mean_p"], b["rate"], marker="o", ms=3, lw=1, label=name)
    ax.plot([0.3, 0.7], [0.3, 0.7], "k--", lw=0.8)
    ax.set_xlim(0.3, 0.7)
    ax.set_ylim(0.3, 0.7)
    ax.set_xlabel("mean predicted P(up)")
    ax.set_ylabel("observed up rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
