"""The report's answers, written from the analysed numbers (never typed by hand).

Each sentence takes its figures from the same `SettingAnalysis` objects the tables are
printed from, so a rerun rewrites text and tables together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.report.analysis import Comparison, Gap, SettingAnalysis

ALPHA = 0.05
LINEAR = "logistic regression"
UNION = "scratch (teacher's data + slice)"
BAR = 0.70  # the bar for the committed student's test volatility AUC


def fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def fmt_cmp(c: Comparison | None) -> str:
    if c is None:
        return "not tested"
    t = c.test
    return f"ΔAUC {t.d_auc:+.4f} [{t.auc_ci[0]:+.4f}, {t.auc_ci[1]:+.4f}], Holm p {fmt_p(c.p_holm)}"


def fmt_gap(g: Gap | None) -> str:
    if g is None:
        return "not estimated"
    r = g.result
    if r.ratio != r.ratio:  # NaN: no gap
        return f"undefined (the teacher does not beat scratch: gap {r.teacher_gap:+.4f} AUC)"
    ci = (
        f"[{100 * r.ci_low:.0f} %, {100 * r.ci_high:.0f} %]"
        if r.n_valid
        else "[no resample with a positive gap]"
    )
    return f"{100 * r.ratio:.0f} % {ci} of a {r.teacher_gap:+.4f} AUC gap"


def beats(c: Comparison | None, alpha: float = ALPHA) -> str:
    if c is None:
        return "was not compared with"
    if c.p_holm < alpha:
        return "beats" if c.test.d_auc > 0 else "is worse than"
    return "does not significantly beat" if c.test.d_auc > 0 else "does not beat"


def distilled_rows(a: SettingAnalysis) -> list[str]:
    """Rows of A that learn from the teacher (not scratch, label smoothing or teachers)."""
    skip = {"majority", "scratch", "label-smoothed", "ensemble teacher", "single teacher"}
    skip |= {LINEAR, "lightgbm", "diverse teacher"}
    return [n for n in a.result.preds if n not in skip]


def best_distilled(a: SettingAnalysis, head: str) -> str:
    return max(distilled_rows(a), key=lambda n: a.mean(head, n))


def answers(
    analyses: Sequence[SettingAnalysis],
    selection: dict[str, Any] | None,
    exported: dict[str, Any] | None,
    alpha: float = ALPHA,
    extra: Sequence[str] = (),
) -> str:
    """Markdown bullets answering the issue's questions with the run's numbers (`extra`:
    finished bullets of other steps, e.g. the equivalence test and the locked evaluation)."""
    by_key = {x.result.key: x for x in analyses}
    w: list[str] = ["## Answers (generated from the tables below)\n"]
    a = by_key.get("A")
    if a is not None:
        v = "volatility"
        e, s = a.mean(v, "ensemble teacher"), a.mean(v, "scratch")
        c = a.comparison(v, "ensemble teacher", "scratch")
        n_family = sum(1 for x in a.comparisons if x.head == v)
        w.append(
            f"- **Pooled volatility head: does the ensemble teacher beat the scratch student?** "
            f"The ensemble (AUC {e:.4f}) {beats(c, alpha)} the scratch [16,16] student "
            f"(AUC {s:.4f}): {fmt_cmp(c)} (family of {n_family} "
            f"pre-registered comparisons on this head). The single member: AUC "
            f"{a.mean(v, 'single teacher'):.4f} "
            f"({fmt_cmp(a.comparison(v, 'single teacher', 'scratch'))} vs scratch)."
        )
        best = best_distilled(a, v)
        g = a.gap(v, best)
        ratio = a.result.params["ensemble teacher"] / max(1, a.result.params[best])
        w.append(
            f"- **Share of that gap the best distilled single student recovers:** `{best}` "
            f"(AUC {a.mean(v, best):.4f}) recovers {fmt_gap(g)}, at "
            f"{a.result.params[best]:,} parameters — {ratio:.0f}× fewer than the ensemble's "
            f"{a.result.params['ensemble teacher']:,}. Versus scratch: "
            f"{fmt_cmp(a.comparison(v, best, 'scratch'))}. Plain KD recovers "
            f"{fmt_gap(a.gap(v, 'kd'))}."
        )
        target = g is not None and g.result.ratio >= 0.5 and ratio >= 20
        w.append(
            f"- **The target (≥ half of the ensemble's gain at ≥ 20× fewer parameters):** "
            f"{'met' if target else 'not met'} by the point estimate"
            + (
                f"; the CI's lower end is {100 * g.result.ci_low:.0f} %."
                if g is not None and g.result.n_valid
                else "."
            )
        )
        w.append(_feature_vs_kd(a, v, alpha, "pooled (A)"))
        d = "direction"
        w.append(
            f"- **Direction head (reported as it is):** ensemble AUC "
            f"{a.mean(d, 'ensemble teacher'):.4f}, scratch {a.mean(d, 'scratch'):.4f}, "
            f"best distilled {a.mean(d, best_distilled(a, d)):.4f} — "
            f"{fmt_cmp(a.comparison(d, 'ensemble teacher', 'scratch'))}; no usable signal."
        )
    bs = [x for x in analyses if x.result.key.startswith("B/")]
    for b in bs:
        w.append(_cross_asset(b, alpha))
    if bs:
        w.append(
            "- **When is the distilled student the right choice?** When only the teacher's "
            "outputs can travel (its data is private, too large or gone): it is then the "
            "best student the slice can give, measured by the rows above. When the teacher's "
            "data can be used, the `scratch (teacher's data + slice)` row says what simply "
            "training on more data gives; compare it with the distilled rows above."
        )
    ct = by_key.get("C")
    if ct is not None:
        v = "volatility"
        w.append(
            f"- **Cross-timeframe (C), volatility:** teachers of the 5-minute labels that read "
            f"the 1-minute bars: AUC {ct.mean(v, '1m teacher'):.4f}, the 1-minute bars stacked "
            f"on the 5-minute window: {ct.mean(v, '1m+5m teacher'):.4f}; the 5-minute teacher "
            f"{ct.mean(v, '5m teacher'):.4f}, scratch {ct.mean(v, 'scratch'):.4f}. 1m vs 5m "
            f"teacher: {fmt_cmp(ct.comparison(v, '1m teacher', '5m teacher'))}; 1m+5m vs 5m "
            f"teacher: {fmt_cmp(ct.comparison(v, '1m+5m teacher', '5m teacher'))}. KD recovers "
            f"{fmt_gap(ct.gap(v, 'kd from 1m'))} from the 1m teacher, "
            f"{fmt_gap(ct.gap(v, 'kd from 1m+5m'))} from the 1m+5m teacher and "
            f"{fmt_gap(ct.gap(v, 'kd from 5m'))} from the 5m teacher; KD from 1m+5m vs from 5m: "
            f"{fmt_cmp(ct.comparison(v, 'kd from 1m+5m', 'kd from 5m'))}."
        )
        w.append(
            _feature_vs_kd(
                ct,
                v,
                alpha,
                "cross-timeframe (C)",
                suffixes=(" from 1m", " from 1m+5m", " from 5m"),
            )
        )
    dd = by_key.get("D")
    if dd is not None:
        v = "volatility"
        parts = []
        for n in dd.result.preds:
            if n.endswith("teacher (zero-shot)"):
                parts.append(f"{n.split()[0]} teacher AUC {dd.mean(v, n):.4f}")
        kd_rows = [n for n in dd.result.preds if " from " in n]
        rows = "; ".join(
            f"`{n}` {dd.mean(v, n):.4f} ({fmt_cmp(dd.comparison(v, n, 'scratch (slice)'))} vs "
            f"scratch)"
            for n in kd_rows
        )
        w.append(
            f"- **Cross-domain (D), volatility, domain shift:** {', '.join(parts)} on the "
            f"crypto test bars, scratch on the slice {dd.mean(v, 'scratch (slice)'):.4f}; "
            f"{rows}."
        )
    w += [line for line in (linear_answer(x, alpha) for x in analyses) if line]
    w += [line for line in extra if line]
    if selection is not None:
        w.append(committed_answer(selection, exported))
    return "\n".join(w) + "\n"


def linear_answer(a: SettingAnalysis, alpha: float = ALPHA, head: str = "volatility") -> str:
    """Issue 29: does each model of the setting beat the logistic regression on the same
    input and rows? ΔAUC with its interval and Holm p, per model compared with it."""
    if LINEAR not in a.result.preds:
        return ""
    rows = [c for c in a.comparisons if c.head == head and c.test.b == LINEAR]
    if not rows:
        return ""
    parts = [
        f"`{c.test.a}` {beats(c, alpha)} it ({a.mean(head, c.test.a):.4f}; {fmt_cmp(c)})"
        for c in rows
    ]
    return (
        f"- **The linear baseline ({a.result.key}, {head}):** the "
        f"logistic regression on the flattened window scores {a.mean(head, LINEAR):.4f}; "
        + "; ".join(parts)
        + "."
    )


def _feature_vs_kd(
    a: SettingAnalysis,
    head: str,
    alpha: float,
    where: str,
    suffixes: Sequence[str] = ("",),
) -> str:
    won, lost, tied = [], [], []
    for suf in suffixes:
        kd = f"kd{suf}"
        for c in a.comparisons:
            if c.head != head or c.test.b != kd or c.test.a.startswith("kd"):
                continue
            item = f"`{c.test.a}` {c.test.d_auc:+.4f} (Holm p {fmt_p(c.p_holm)})"
            if c.p_holm < alpha and c.test.d_auc > 0:
                won.append(item)
            elif c.p_holm < alpha:
                lost.append(item)
            else:
                tied.append(item)
    out = f"- **Feature distillation vs plain KD, {where}, {head} (ΔAUC vs KD):** "
    out += f"beats KD: {', '.join(won) or 'none'}; worse than KD: {', '.join(lost) or 'none'}; "
    out += f"no significant difference: {', '.join(tied) or 'none'}."
    return out


def _cross_asset(b: SettingAnalysis, alpha: float) -> str:
    v = "volatility"
    sym = b.result.key.split("/", 1)[1]
    rows = [n for n in b.result.preds if n.endswith("(pooled teacher)")]
    rows += [n for n in b.result.preds if n == "kd (pooled diverse teacher)"]
    lin = LINEAR in b.result.preds
    parts = []
    for n in rows:
        cells = ", ".join(
            f"vs {ctl}: {fmt_cmp(b.comparison(v, n, ctl))}"
            for ctl in (
                "scratch (slice)",
                "kd from slice-only teacher",
                "scratch (full alt history)",
                UNION,
                LINEAR,
            )
            if b.comparison(v, n, ctl) is not None
        )
        parts.append(f"`{n}` AUC {b.mean(v, n):.4f}, gap recovered {fmt_gap(b.gap(v, n))}; {cells}")
    return (
        f"- **Cross-asset low data (B), {sym}, volatility:** pooled ensemble zero-shot AUC "
        f"{b.mean(v, 'ensemble teacher'):.4f}, scratch on the slice "
        f"{b.mean(v, 'scratch (slice)'):.4f}, scratch on the full alt history "
        f"{b.mean(v, 'scratch (full alt history)'):.4f}, KD from a slice-only teacher "
        f"{b.mean(v, 'kd from slice-only teacher'):.4f}, teacher's data + slice "
        f"{b.mean(v, UNION):.4f}"
        + (f", the logistic regression on the slice {b.mean(v, LINEAR):.4f}" if lin else "")
        + ". "
        + "; ".join(parts)
        + "."
    )


def size_label(c: dict[str, Any]) -> str:
    """A candidate's size as the report names it: its TCN channels, or "linear"."""
    return "linear" if c.get("family") == "mlp" and not c["channels"] else str(c["channels"])


def committed_answer(sel: dict[str, Any], exported: dict[str, Any] | None) -> str:
    """The committed student's answer: its size, the rule's outcome and the test bar."""
    ch = sel["chosen"]
    cand = next(c for c in sel["candidates"] if c["channels"] == ch)
    ch = size_label(cand)
    out = (
        f"- **Committed student:** size {ch} ({cand['params']:,} parameters), the smallest "
        f"pre-registered size whose validation volatility AUC "
        f"({cand['val_auc']['volatility']:.4f}) "
        f"is within the tolerance of the teacher's ({sel['teacher_val_auc']['volatility']:.4f})"
        if sel["held"]
        else f"- **Committed student:** no size held the teacher's validation quality; the "
        f"largest, {ch}, is committed"
    )
    if exported:
        m = exported["card"]["metrics"]
        auc = m["volatility"]["auc"]
        ci = sel["chosen_test_auc"]["volatility"]
        out += (
            f"; on the last fold's pooled test bars volatility AUC {auc:.4f} "
            f"[{ci['ci_low']:.4f}, {ci['ci_high']:.4f}] ({ci['days']} days) (the issue's bar "
            f"of {BAR:.2f}: {_bar_verdict(auc, ci['ci_low'])}), direction AUC "
            f"{m['direction']['auc']:.4f}"
        )
    return out + "."


def _bar_verdict(auc: float, ci_low: float) -> str:
    """Whether the test AUC meets the bar: not at all, by the point estimate, or wholly."""
    if auc < BAR:
        return "not met"
    if ci_low >= BAR:
        return "met, the whole interval above it"
    return f"met by the point estimate; the interval's lower end is {ci_low:.4f}"
