"""Issue 29's one definitive feature-distillation test: feature methods vs KD, low data.

Pre-registered in `[cross_asset]` (`feature_test`, `margin`): on setting B's 20 % slices of
every target alt, each listed method distilled from the pooled 3-member ensemble teacher
against KD from the same teacher, volatility head, pooled over the alts. ΔAUC = mean over
alts and seeds of (method − KD), each alt's AUC computed on its own test bars (AUCs are not
comparable across a pooled ranking of different assets), with the hierarchical bootstrap of
:mod:`training.scoring.stats` (the same resampled days per alt for both models; each model's
seeds drawn with replacement). Verdict by TOST at ±margin (the 90 % interval inside the
margin: equivalent) or by the 95 % interval (above 0: better, below: worse); else
inconclusive. The TOST p-values are Holm-adjusted over the listed methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from service.model.card import HEADS
from training.experiments.results import SettingResult
from training.scoring.stats import Equivalence, day_blocks, equivalence, holm

HEAD = "volatility"


def _row(method: str) -> str:
    return f"{method} (pooled teacher)"


def stacked(
    bs: Sequence[SettingResult], model: str, head: str = HEAD
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """The alts' test rows one after another: labels (N,), one (N,) array per seed, blocks
    (alt, day) numbered 0..D-1, and each row's alt index (N,)."""
    i = HEADS.index(head)
    ys, blocks, alt = [], [], []
    n_seeds = min(len(b.preds[model]) for b in bs)
    runs: list[list[np.ndarray]] = [[] for _ in range(n_seeds)]
    off = 0
    for k, b in enumerate(bs):
        ys.append(b.y[:, i])
        d = day_blocks(b.times)
        blocks.append(d + off)
        off += int(d.max()) + 1
        alt.append(np.full(len(b.y), k))
        for s in range(n_seeds):
            runs[s].append(b.preds[model][s][head])
    return (
        np.concatenate(ys),
        [np.concatenate(r) for r in runs],
        np.concatenate(blocks),
        np.concatenate(alt),
    )


def feature_test(
    bs: Sequence[SettingResult], methods: Sequence[str], margin: float, n_boot: int
) -> dict[str, Any]:
    """Each method vs KD: TOST pooled over the alts plus each alt's own result."""
    bs = [b for b in bs if _row("kd") in b.preds]
    out: dict[str, Any] = {"margin": margin, "n_boot": n_boot, "alts": [], "tests": []}
    if not bs:
        return out
    out["alts"] = [b.key.split("/", 1)[1] for b in bs]
    results: list[tuple[str, Equivalence, list[Equivalence]]] = []
    for m in methods:
        if not all(_row(m) in b.preds for b in bs):
            continue
        y, kd, blocks, alt = stacked(bs, _row("kd"))
        _, mm, _, _ = stacked(bs, _row(m))
        pooled = _per_alt_mean_equivalence(y, mm, kd, blocks, alt, margin, n_boot)
        per_alt = []
        for k in range(len(bs)):
            sel = alt == k
            per_alt.append(
                equivalence(
                    y[sel],
                    [r[sel] for r in mm],
                    [r[sel] for r in kd],
                    blocks[sel] - blocks[sel].min(),
                    margin,
                    n_boot,
                )
            )
        results.append((m, pooled, per_alt))
    adj = holm([r[1].p_tost for r in results])
    for (m, pooled, per_alt), p_adj in zip(results, adj, strict=True):
        out["tests"].append(
            {
                "method": m,
                "seeds": min(len(b.preds[_row(m)]) for b in bs),
                "pooled": asdict(pooled),
                "p_tost_holm": p_adj,
                "per_alt": [asdict(e) for e in per_alt],
            }
        )
    return out


def _per_alt_mean_equivalence(
    y: np.ndarray,
    runs_a: list[np.ndarray],
    runs_b: list[np.ndarray],
    blocks: np.ndarray,
    alt: np.ndarray,
    margin: float,
    n_boot: int,
) -> Equivalence:
    """TOST on the mean over alts of each alt's ΔAUC: AUC within each alt, so one alt's
    base rate never ranks against another's. Implemented by scoring every alt's rows as
    their own 'model' under the shared block resamples (blocks are alt-specific)."""
    from training.scoring.stats import boot_samples, tost

    diffs, boots = [], []
    for k in np.unique(alt):
        sel = alt == k
        obs, boot, _ = boot_samples(
            y[sel],
            [r[sel] for r in runs_a],
            [r[sel] for r in runs_b],
            blocks[sel] - blocks[sel].min(),
            "auc",
            n_boot,
            seed=int(k),
        )
        diffs.append(obs)
        boots.append(boot)
    obs = float(np.mean(diffs))
    boot = np.mean(boots, axis=0)  # (B,) independent alts: resampled independently
    return tost(obs, boot, margin, int(np.unique(blocks).size))


def render(ft: dict[str, Any]) -> str:
    """The report's section: one row per method (pooled) and per alt."""
    if not ft.get("tests"):
        return ""
    m = ft["margin"]
    lines = [
        "## Feature distillation vs KD: the pre-registered equivalence test\n",
        f"Volatility head, setting B's 20 % slices of {', '.join(ft['alts'])}, every method "
        f"distilled from the pooled 3-member ensemble teacher; ΔAUC = method − KD (mean over "
        f"alts of each alt's ΔAUC), hierarchical bootstrap over days and seeds "
        f"({ft['n_boot']} resamples); equivalence margin ±{m} AUC stated before the run "
        "(TOST: the 90 % interval inside the margin), TOST p Holm-adjusted over the methods.\n",
        "| method | bars | seeds | ΔAUC vs KD | 90 % CI | 95 % CI | TOST p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in ft["tests"]:
        p = t["pooled"]
        lines.append(
            f"| {t['method']} | all alts | {t['seeds']} | {p['diff']:+.4f} | "
            f"[{p['ci90'][0]:+.4f}, {p['ci90'][1]:+.4f}] | [{p['ci95'][0]:+.4f}, "
            f"{p['ci95'][1]:+.4f}] | {t['p_tost_holm']:.3f} | **{p['verdict']}** |"
        )
        for alt, e in zip(ft["alts"], t["per_alt"], strict=True):
            lines.append(
                f"| {t['method']} | {alt} | {t['seeds']} | {e['diff']:+.4f} | "
                f"[{e['ci90'][0]:+.4f}, {e['ci90'][1]:+.4f}] | [{e['ci95'][0]:+.4f}, "
                f"{e['ci95'][1]:+.4f}] | {e['p_tost']:.3f} (unadjusted) | {e['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def answer(ft: dict[str, Any]) -> str:
    """One sentence with numbers: better than, equivalent to, worse than KD, or neither."""
    if not ft.get("tests"):
        return ""
    words = {
        "equivalent": "equivalent to",
        "better": "better than",
        "worse": "worse than",
        "inconclusive": "neither shown equivalent to nor different from",
    }
    parts = []
    for t in ft["tests"]:
        p = t["pooled"]
        parts.append(
            f"`{t['method']}` is {words[p['verdict']]} KD (ΔAUC {p['diff']:+.4f}, 90 % CI "
            f"[{p['ci90'][0]:+.4f}, {p['ci90'][1]:+.4f}], TOST Holm p {t['p_tost_holm']:.3f})"
        )
    return (
        f"- **Feature distillation vs KD (the pre-registered test, margin ±{ft['margin']} "
        f"AUC, {', '.join(ft['alts'])} slices, volatility):** " + "; ".join(parts) + "."
    )
