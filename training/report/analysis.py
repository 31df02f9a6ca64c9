"""The numbers of the report, computed once from each setting's predictions (pure).

Per setting and head: every model's metrics per seed; the pre-registered comparisons (each
model scored as its mean single model over seeds, paired hierarchical bootstrap over days
and seeds of ΔAUC and Δlog loss) with Holm–Bonferroni adjusted AUC p-values over the
setting's family for that head; the gap recovered with its paired bootstrap CI; a
per-symbol AUC breakdown. The tables and the written answers both read these objects, so
the text cannot drift from the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from service.model.card import HEADS
from training.experiments.results import SettingResult
from training.report.render import seed_metrics
from training.scoring.metrics import roc_auc
from training.scoring.stats import (
    BootCache,
    GapResult,
    day_blocks,
    gap_recovered,
    holm,
    runs_bootstrap,
)

P = NDArray[np.float64]


@dataclass(frozen=True)
class Paired:
    """Model A against B on the same bars, each scored as its mean single model over seeds."""

    a: str
    b: str
    d_auc: float
    auc_ci: tuple[float, float]
    p_auc: float
    d_logloss: float
    p_logloss: float
    d_acc: float  # mean-over-seeds accuracy difference (not tested)


def paired_runs(
    y: NDArray[np.int64],
    blocks: NDArray[np.int64],
    a: str,
    runs_a: list[P],
    b: str,
    runs_b: list[P],
    n_boot: int,
    cache: BootCache | None = None,
) -> Paired:
    """Hierarchical (days × seeds) bootstraps of ΔAUC and Δlog loss (A − B) on
    mean-over-seeds metrics."""
    ra = runs_bootstrap(y, runs_a, runs_b, blocks, "auc", n_boot, cache=cache)
    rl = runs_bootstrap(y, runs_a, runs_b, blocks, "log_loss", n_boot, cache=cache)

    def acc(runs: list[P]) -> float:
        return float(np.mean([np.mean((r > 0.5) == y) for r in runs]))

    return Paired(
        a, b, ra.diff, (ra.ci_low, ra.ci_high), ra.p_value, rl.diff, rl.p_value,
        acc(runs_a) - acc(runs_b),
    )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """A pre-registered model-vs-control test on one head."""

    head: str
    test: Paired
    p_holm: float  # Holm-adjusted AUC p over the setting's family on this head


@dataclass(frozen=True)
class Gap:
    head: str
    student: str
    scratch: str
    teacher: str
    result: GapResult


@dataclass
class SettingAnalysis:
    result: SettingResult
    metrics: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    per_group: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def mean(self, head: str, model: str, metric: str = "auc") -> float:
        return float(np.mean(self.metrics[head][model][metric]))

    def comparison(self, head: str, a: str, b: str) -> Comparison | None:
        for c in self.comparisons:
            if c.head == head and c.test.a == a and c.test.b == b:
                return c
        return None

    def gap(self, head: str, student: str) -> Gap | None:
        for g in self.gaps:
            if g.head == head and g.student == student:
                return g
        return None


def seed_mean(runs: list[dict[str, P]], head: str) -> P:
    """A model's seed-averaged probabilities on one head."""
    out: P = np.mean([r[head] for r in runs], axis=0)
    return out


def analyse(res: SettingResult, n_boot: int) -> SettingAnalysis:
    """Everything the report prints about one setting."""
    out = SettingAnalysis(res)
    blocks = day_blocks(res.times)
    for i, head in enumerate(HEADS):
        y = res.y[:, i]
        out.metrics[head] = {
            n: seed_metrics(y, [r[head] for r in runs], None) for n, runs in res.preds.items()
        }
        # every model scored as its mean single model over seeds (a seed average would be
        # an ensemble of students); the per-symbol breakdown below does the same
        runs = {n: [r[head] for r in rs] for n, rs in res.preds.items()}
        cache: BootCache = {}  # each model's resamples once per head (ids of `runs` lists)
        tests = [
            paired_runs(y, blocks, a, runs[a], b, runs[b], n_boot, cache)
            for a, b in res.comparisons
            if a in runs and b in runs
        ]
        adj = holm([t.p_auc for t in tests])
        out.comparisons += [Comparison(head, t, q) for t, q in zip(tests, adj, strict=True)]
        for s, c, t in res.gaps:
            if s in runs and c in runs and t in runs:
                g = gap_recovered(y, runs[s], runs[c], runs[t], blocks, n_boot, cache=cache)
                out.gaps.append(Gap(head, s, c, t, g))
        if res.groups is not None:
            groups = list(dict.fromkeys(res.groups.tolist()))
            out.per_group[head] = {
                n: {
                    g: float(np.mean([roc_auc(y[res.groups == g], r[res.groups == g]) for r in rs]))
                    for g in groups
                }
                for n, rs in runs.items()
            }
    return out
