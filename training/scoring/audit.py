"""``python -m training audit``: the offline teacher re-scores what the live student served.

The service never runs the teacher (it never imports torch). Offline, this command reads the
signal journal of a state directory (:mod:`service.monitor.signal_journal`), rebuilds the feature
windows of every journaled signal from the journaled klines (``service.features``, the same
code the service ran), lets the teacher ensemble (``training.nets.ensemble.load_ensemble``,
default ``runs/train/teacher``, as ``make train`` saves it) predict both heads on them, and
reports per head the student–teacher agreement on live data — the share of candles where
both are on the same side of 0.5, as ``training.scoring.metrics.agreement`` computes it at test
time — next to the card's test-time ``agreement_with_teacher``. Live data: every journaled
signal from a symbol's first live one on (the initial history backfill is left out, the
catch-up after a restart is in). Where the next candle is in the journal, both models are
also scored against the outcome (labels as DESIGN section 3).

    python -m training audit --state-dir state/demo [--teacher runs/train/teacher] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service import features as fx
from service.model.card import HEADS, ModelCard
from service.monitor.signal_journal import SignalJournal, SignalRow
from training.data.journal import open_journal
from training.scoring import metrics as metrics_eval

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
DEFAULT_TEACHER = Path("runs/train/teacher")
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


class Teacher(Protocol):
    """What the audit needs of the teacher (``training.nets.ensemble.Ensemble``)."""

    def predict_proba(self, x: F32) -> dict[str, F64]: ...


def _next_is_adjacent(start: npt.NDArray[np.int64], step: int) -> npt.NDArray[np.bool_]:
    ok = np.zeros(start.shape[0], dtype=bool)
    ok[:-1] = np.diff(start) == step
    return ok


def audit_symbol(
    journal: SignalJournal, symbol: str, interval: str, teacher: Teacher
) -> dict[str, Any] | None:
    """Student (served) vs teacher on one symbol's journaled signals; None without any."""
    table = journal.table(symbol, interval)
    signals: list[SignalRow] = journal.signals(symbol, interval)
    # live data: from the first live signal on (the history backfill before it is not; the
    # catch-up after a restart is), the rule the service's live scores follow
    first_live = next((s.candle_start for s in signals if s.live), None)
    signals = [s for s in signals if first_live is not None and s.candle_start >= first_live]
    if not len(table) or not signals:
        return None
    feats = fx.batch_features(table.open, table.high, table.low, table.close, table.volume)
    ends = set(int(e) for e in fx.window_ends(feats))  # rows whose window is complete
    pos = {int(s): i for i, s in enumerate(table.start)}
    rows = [(pos[s.candle_start], s) for s in signals if pos.get(s.candle_start) in ends]
    if not rows:
        return None
    idx = np.array([i for i, _ in rows], dtype=np.int64)
    x = fx.make_windows(feats, idx)  # (M, F, T) float32, raw features
    p_teacher = teacher.predict_proba(x)
    step = int(table.start[1] - table.start[0]) if len(table) > 1 else 0
    adjacent = _next_is_adjacent(table.start, step)[idx] if step else np.zeros(idx.size, bool)
    labels = {
        "direction": fx.make_labels(table.open, table.close)[idx],
        "volatility": fx.make_vol_labels(table.high, table.low, table.close)[idx],
    }
    served = {
        "direction": np.array([s.probability_up for _, s in rows]),
        "volatility": np.array([s.probability_high_vol for _, s in rows]),
    }
    out: dict[str, Any] = {
        "symbol": symbol,
        "signals": len(rows),
        "live": sum(s.live for _, s in rows),
    }
    for head in HEADS:
        ps, pt = served[head], np.asarray(p_teacher[head], dtype=np.float64)
        y = labels[head]
        scored = adjacent & ~np.isnan(y)
        entry: dict[str, Any] = {
            "n": int(ps.size),
            "agreement": metrics_eval.agreement(ps, pt),
            "scored": int(scored.sum()),
        }
        if scored.any():
            for who, p in (("student", ps), ("teacher", pt)):
                entry[who] = {
                    "accuracy": metrics_eval.accuracy(y[scored], p[scored]),
                    "log_loss": metrics_eval.log_loss(y[scored], p[scored]),
                    "auc": metrics_eval.roc_auc(y[scored], p[scored]),
                }
        out[head] = entry
    return out


def card_agreement(card: ModelCard | None, head: str) -> float | None:
    """The card's test-time student–teacher agreement for ``head``, if recorded."""
    if card is None:
        return None
    m = card.metrics.get(head)
    value = m.get("agreement_with_teacher") if isinstance(m, dict) else None
    return float(value) if isinstance(value, int | float) else None


def run_audit(state_dir: Path, teacher: Teacher, card: ModelCard | None = None) -> dict[str, Any]:
    """The whole audit: per symbol and head, plus every symbol pooled per head."""
    journal = open_journal(state_dir)
    try:
        per_symbol = []
        for sym in journal.symbols():
            for iv in journal.intervals(sym):
                r = audit_symbol(journal, sym, iv, teacher)
                if r is not None:
                    r["interval"] = iv
                    per_symbol.append(r)
    finally:
        journal.close()
    pooled = {}
    for head in HEADS:
        n = sum(r[head]["n"] for r in per_symbol)
        agree = sum(r[head]["agreement"] * r[head]["n"] for r in per_symbol) / n if n else None
        pooled[head] = {"n": n, "agreement": agree, "test_agreement": card_agreement(card, head)}
    return {
        "state_dir": str(state_dir),
        "model": None if card is None else {"name": card.name, "version": card.version},
        "heads": pooled,
        "symbols": per_symbol,
    }


def _card_of(journal_dir: Path, explicit: Path | None) -> ModelCard | None:
    if explicit is not None:
        return ModelCard.load(explicit)
    journal = open_journal(journal_dir)
    try:
        names = {
            s.model_name
            for sym in journal.symbols()
            for iv in journal.intervals(sym)
            for s in journal.signals(sym, iv)[-1:]
        }
    finally:
        journal.close()
    for name in sorted(names):
        path = MODELS_DIR / f"{name}.json"
        if path.is_file():
            return ModelCard.load(path)
    return None


def render(report: dict[str, Any]) -> str:
    """A plain-text table of the report."""
    lines = [f"audit of {report['state_dir']} (model {report['model']})", ""]
    lines.append("| head | signals | agreement on live data | agreement at test time |")
    lines.append("|---|---|---|---|")
    for head, h in report["heads"].items():
        agree = "–" if h["agreement"] is None else f"{h['agreement']:.4f}"
        test = "–" if h["test_agreement"] is None else f"{h['test_agreement']:.4f}"
        lines.append(f"| {head} | {h['n']} | {agree} | {test} |")
    lines += [
        "",
        "| symbol | head | n | agreement | scored | student log loss | teacher log loss |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for r in report["symbols"]:
        for head in HEADS:
            h = r[head]
            s = h.get("student", {}).get("log_loss")
            t = h.get("teacher", {}).get("log_loss")
            lines.append(
                f"| {r['symbol']} | {head} | {h['n']} | {h['agreement']:.4f} | {h['scored']} | "
                f"{'–' if s is None else f'{s:.4f}'} | {'–' if t is None else f'{t:.4f}'} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training audit",
        description="Re-score the journaled live signals with the offline teacher ensemble: "
        "student-teacher agreement per head on live data next to the test-time figure.",
    )
    p.add_argument(
        "--state-dir", type=Path, required=True, help="the service's APPRENTICE_STATE_DIR"
    )
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="ensemble directory")
    p.add_argument("--card", type=Path, help="model card (default: models/<journaled model>.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    from training.nets.ensemble import load_ensemble  # torch only when the audit runs

    try:
        teacher = load_ensemble(args.teacher)
        card = _card_of(args.state_dir, args.card)
        report = run_audit(args.state_dir, teacher, card)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
