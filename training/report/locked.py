"""The locked evaluation (issue 29): the committed student, once, on bars no choice has seen.

`python -m training.report.locked` (after `make train`, or on the committed student) scores
the exported ONNX student zero-shot on every window of the bundled Nov 2025–Jan 2026 files of
the alts in `[locked]` (no fit, no selection and no tuning has read them: the students and
the rule train and choose on Apr–Jul), next to the standing linear control — a logistic
regression on the flattened standardised 12×32 window, trained on the student's own training
windows (the selection fold of configs/report.toml, rebuilt here and checked against the
card's data span), C chosen on the validation windows. Each alt's AUCs carry a 95 % day-block
percentile interval, and student − linear a paired day-block bootstrap interval
(`locked.bootstrap` resamples of whole UTC days; one model each, so there is no seed level).
The verdict per alt: "beats" (interval above 0), "loses" (below 0) or "ties"; the issue's
target (student ≥ linear − `locked.margin`) is stated beside it. The same two models on the
card's own test bars give the test-bar figure.

The figures go into the card (`locked_evaluation`, beside `metrics`; the card's sha256
covers only the ONNX file) and into the report (a section between markers). A card that
already holds a locked evaluation of the same ONNX sha256 is not evaluated again: the stored
figures are printed instead (the bars are looked at once; `--force` is for a new study).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.market.klines import interval_ms
from service.model.card import HEADS, ModelCard, sha256_file
from training.data.series import PooledFold, calendar_folds, load_series, pooled_fold, windows
from training.experiments.config import ReportConfig, load_report_config
from training.experiments.pooled import load_pooled
from training.nets.baselines import LinearBaseline
from training.scoring.evaluate import ort_head_probabilities
from training.scoring.stats import auc_interval, day_blocks, runs_bootstrap

BEGIN = "<!-- locked-evaluation -->"
BULLET = "- **Locked evaluation"
END = "<!-- /locked-evaluation -->"
STUDENT = "student"
LINEAR = "logistic regression"


@dataclass(frozen=True)
class LockedRow:
    """One alt (or the test bars): both models' AUC of one head, and student − linear."""

    where: str
    head: str
    windows: int
    days: int
    student: tuple[float, float, float]  # AUC, 95 % low, high
    linear: tuple[float, float, float]
    diff: tuple[float, float, float]  # student − linear, paired interval
    p: float
    verdict: str  # beats / ties / loses
    target_met: bool  # student ≥ linear − margin (point estimates)


def verdict(lo: float, hi: float) -> str:
    """'beats' when the whole interval of student − linear lies above 0, 'loses' below."""
    return "beats" if lo > 0 else "loses" if hi < 0 else "ties"


def selection_fold(cfg: ReportConfig) -> PooledFold:
    """The committed student's training/validation/test windows: A's last fold with the
    selection's strides (as training.experiments.selection builds them)."""
    pc, sel = cfg.pooled, cfg.select
    series = load_pooled(cfg)
    folds = calendar_folds(
        series[0].times,
        interval_ms(cfg.interval),
        pc.folds,
        cfg.embargo,
        pc.test_fraction,
        pc.val_fraction,
    )
    return pooled_fold(
        series,
        folds[-1],
        sel.train_stride or pc.train_stride,
        val_stride=sel.val_stride or pc.val_stride,
    )


def check_span(pf: PooledFold, span: dict[str, Any]) -> None:
    """The rebuilt fold must be the card's (else the linear control read other rows)."""
    got = {
        "train_first_ms": int(pf.train.start_ms.min()),
        "train_last_ms": int(pf.train.start_ms.max()),
        "val_first_ms": int(pf.val.start_ms.min()),
        "val_last_ms": int(pf.val.start_ms.max()),
        "test_first_ms": int(pf.test.start_ms.min()),
        "test_last_ms": int(pf.test.start_ms.max()),
    }
    bad = {k: (v, span.get(k)) for k, v in got.items() if span.get(k) not in (None, v)}
    if bad:
        raise ValueError(f"the rebuilt selection fold differs from the card's data span: {bad}")


def compare(
    where: str,
    y: np.ndarray,
    times: np.ndarray,
    p_student: dict[str, np.ndarray],
    p_linear: dict[str, np.ndarray],
    n_boot: int,
    margin: float,
) -> list[LockedRow]:
    """Both heads' AUC intervals and the paired day-block bootstrap of student − linear."""
    blocks = day_blocks(times)
    out = []
    for i, h in enumerate(HEADS):
        s = auc_interval(y[:, i], p_student[h], blocks, n_boot)
        lin = auc_interval(y[:, i], p_linear[h], blocks, n_boot)
        d = runs_bootstrap(y[:, i], [p_student[h]], [p_linear[h]], blocks, "auc", n_boot)
        out.append(
            LockedRow(
                where,
                h,
                int(y.shape[0]),
                s.n_blocks,
                (s.auc, s.ci_low, s.ci_high),
                (lin.auc, lin.ci_low, lin.ci_high),
                (d.diff, d.ci_low, d.ci_high),
                d.p_value,
                verdict(d.ci_low, d.ci_high),
                s.auc >= lin.auc - margin,
            )
        )
    return out


def evaluate(
    cfg: ReportConfig, onnx_path: Path, card: dict[str, Any], log: Any = print
) -> dict[str, Any]:
    """Fit the linear control on the student's fold, score both on the test bars and on every
    locked window; the card's `locked_evaluation` dict."""
    lk = cfg.locked
    pf = selection_fold(cfg)
    check_span(pf, card.get("data_span", {}))
    log(f"locked: linear control on {len(pf.train)} training / {len(pf.val)} validation windows")
    lin = LinearBaseline(pf.mean, pf.std).fit(pf.train.x, pf.train.y, pf.val.x, pf.val.y)
    log(f"locked: C per head {lin.chosen_c}, validation AUC {lin.val_auc}")
    rows = compare(
        "test bars",
        pf.test.y,
        pf.test.start_ms,
        ort_head_probabilities(onnx_path, pf.test.x),
        lin.predict(pf.test.x),
        lk.bootstrap,
        lk.margin,
    )
    for sym in lk.symbols:
        s = load_series(sym, cfg.interval, lk.period)
        sp = windows(s, np.arange(s.ends.size, dtype=np.int64))
        log(f"locked: {sym} {lk.period}: {len(sp)} windows")
        rows += compare(
            sym,
            sp.y,
            sp.start_ms,
            ort_head_probabilities(onnx_path, sp.x),
            lin.predict(sp.x),
            lk.bootstrap,
            lk.margin,
        )
    return {
        "sha256": sha256_file(onnx_path),
        "period": lk.period,
        "symbols": list(lk.symbols),
        "bootstrap": lk.bootstrap,
        "margin": lk.margin,
        "method": (
            "zero-shot on every window of each alt's bundled file; AUC 95 % intervals and the "
            "paired student - linear interval from a day-block bootstrap (whole UTC days "
            f"resampled, {lk.bootstrap} resamples); linear = logistic regression on the "
            "flattened standardised window, trained on the student's training windows, C "
            "chosen on its validation windows"
        ),
        "linear": {"C": lin.chosen_c, "val_auc": lin.val_auc, "params": lin.params},
        "rows": [asdict(r) for r in rows],
    }


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else "< 0.0001"


def _ci(t: Sequence[float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(t[0])} [{f.format(t[1])}, {f.format(t[2])}]"


def render(locked: dict[str, Any], head: str = "volatility") -> str:
    """The report's section: one table per head asked for, the verdict per alt."""
    rows = [r for r in locked["rows"] if r["head"] == head]
    lines = [
        BEGIN,
        "## Locked evaluation (bars no selection has seen)",
        "",
        f"The committed student (ONNX sha256 `{locked['sha256'][:8]}`) against the logistic-"
        f"regression control ({locked['linear']['params']} parameters, C "
        f"{locked['linear']['C'][head]:g} on validation), {head} head. Method: "
        f"{locked['method']}. Looked at once, after the selection was fixed; the target is "
        f"student ≥ linear − {locked['margin']}.",
        "",
        "| bars | windows | days | student AUC [95 %] | linear AUC [95 %] | student − linear "
        "[95 %] | p | verdict | target met |",
        "|---|---:|---:|---|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['where']} | {r['windows']} | {r['days']} | {_ci(r['student'])} | "
            f"{_ci(r['linear'])} | {_ci(r['diff'], True)} | {_p(r['p'])} | {r['verdict']} | "
            f"{'yes' if r['target_met'] else 'no'} |"
        )
    alts = [r for r in rows if r["where"] != "test bars"]
    lines += ["", "**Answer:** " + answer(alts, locked["margin"]), END]
    return "\n".join(lines) + "\n"


def answer(alts: list[dict[str, Any]], margin: float) -> str:
    """One sentence per verdict over the locked alts."""
    parts = [
        f"{r['where']} {r['verdict']} the linear baseline ({_ci(r['diff'], True)})" for r in alts
    ]
    met = sum(r["target_met"] for r in alts)
    return (
        "on the locked Nov–Jan bars the committed student "
        + "; ".join(parts)
        + f". The target (within {margin} of the linear baseline) is met on {met} of "
        f"{len(alts)} alts."
    )


def put_section(report: Path, section: str, bullet: str = "") -> None:
    """Insert (or replace) the locked section of a report.md before its committed-student
    section (else at the end), and `bullet` as the last of its answers (replacing an older
    locked bullet)."""
    text = report.read_text() if report.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + rest.split(END, 1)[1].lstrip("\n")
    anchor = "## The committed student"
    if anchor in text:
        head, tail = text.split(anchor, 1)
        text = head + section + "\n" + anchor + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    if bullet:
        lines = [ln for ln in text.split("\n") if not ln.startswith(BULLET)]
        text = "\n".join(lines)
        if "\n## Method" in text:
            head, tail = text.split("\n## Method", 1)
            text = head.rstrip("\n") + "\n" + bullet + "\n\n## Method" + tail
    report.write_text(text)


def run_locked(cfg: ReportConfig, exported: dict[str, Any], log: Any = print) -> dict[str, Any]:
    """The report's step after the export: evaluate the just-exported student once and store
    the figures in its card (and in `exported`'s copy of it)."""
    onnx_path = Path(exported["path"])
    card_path = onnx_path.with_suffix(".json")
    locked = evaluate(cfg, onnx_path, json.loads(card_path.read_text()), log)
    store(card_path, locked)
    exported["card"]["locked_evaluation"] = locked
    return locked


def answer_line(locked: dict[str, Any], head: str = "volatility") -> str:
    """The answers' bullet."""
    rows = [r for r in locked["rows"] if r["head"] == head]
    alts = [r for r in rows if r["where"] != "test bars"]
    test = next((r for r in rows if r["where"] == "test bars"), None)
    out = (
        f"{BULLET} (the committed student once, zero-shot, on bars no selection "
        f"has seen, {head}):** " + answer(alts, locked["margin"])
    )
    if test is not None:
        out += (
            f" On the test bars: student {_ci(test['student'])}, logistic regression "
            f"{_ci(test['linear'])} ({test['verdict']}, Δ {_ci(test['diff'], True)})."
        )
    return out


def store(card_path: Path, locked: dict[str, Any]) -> None:
    """Write the figures into the card (validated, written as the exporter writes cards)."""
    data = ModelCard.load(card_path).model_dump()
    data["locked_evaluation"] = locked
    ModelCard.model_validate(data).save(card_path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.report.locked", description=__doc__)
    ap.add_argument("--config", default="configs/report.toml")
    ap.add_argument("--model", default="models/student_pooled_5m.onnx")
    ap.add_argument("--report", default="", help="report.md to put the section into")
    ap.add_argument("--write-card", action="store_true", help="store the figures in the card")
    ap.add_argument("--force", action="store_true", help="evaluate again (a new study)")
    args = ap.parse_args(argv)
    cfg = load_report_config(args.config)
    model = Path(args.model)
    card_path = model.with_suffix(".json")
    card = json.loads(card_path.read_text())
    old = card.get("locked_evaluation") or {}
    if old.get("sha256") == sha256_file(model) and not args.force:
        print("the card already holds this student's locked evaluation; not looking again")
        locked = old
    else:
        locked = evaluate(cfg, model, card)
        if args.write_card:
            store(card_path, locked)
    for h in ("volatility", "direction"):
        print(render(locked, h))
    if args.report:
        put_section(Path(args.report), render(locked), answer_line(locked))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
