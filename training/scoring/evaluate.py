"""Scoring models on held-out bars: baselines, the leakage alarm, and `python -m training evaluate`.

Next-bar direction on 5-minute bars is close to a coin flip, so a model that looks clearly
better than that most likely saw the future: the leakage alarm stops any report in which a
model reaches accuracy ≥ 56 % or AUC ≥ 0.58 on all test bars.

`python -m training evaluate --model models/student_pooled_5m.onnx` scores an exported
student with onnxruntime (no torch) on the bars after its training data ended (from the
card's data span), per symbol on the card and per head, and prints the metrics. What trading
them would have made is ``python -m training backtest`` (the served path, one implementation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from service import features as fx
from training.scoring.metrics import accuracy, head_reports, roc_auc

LEAK_ACCURACY = 0.56
LEAK_AUC = 0.58
RET_1 = fx.FEATURE_NAMES.index("ret_1")


class LeakageAlarm(RuntimeError):
    """A model scores implausibly well on next-bar direction: audit the split before trusting it."""


def leakage_check(name: str, y: ArrayLike, p: ArrayLike) -> None:
    """Raise :class:`LeakageAlarm` if accuracy ≥ 56 % or AUC ≥ 0.58 on these rows."""
    acc, auc = accuracy(y, p), roc_auc(y, p)
    if acc >= LEAK_ACCURACY or auc >= LEAK_AUC:
        raise LeakageAlarm(
            f"{name}: accuracy {acc:.4f} / AUC {auc:.4f} on held-out bars is beyond what "
            f"next-bar direction allows (alarm at ≥ {LEAK_ACCURACY} / ≥ {LEAK_AUC}); "
            "audit the split for leakage (purge, embargo, scaler fitted on training data only)"
        )


def majority_baseline(y_train: ArrayLike, n: int) -> NDArray[np.float64]:
    """Constant up-probability = the training up-rate (predicts the majority class)."""
    rate = float(np.mean(np.asarray(y_train, dtype=np.float64)))
    return np.full(n, rate)


def last_return_baseline(
    x_train: NDArray[np.float32], y_train: ArrayLike, x_test: NDArray[np.float32]
) -> NDArray[np.float64]:
    """Sign of the last return, calibrated on training data.

    Predicts P(up | last return > 0) and P(up | last return ≤ 0) as measured on the training
    windows, so its log loss is fair and its direction is the sign rule (or its reversal, if
    the training data showed mean reversion).
    """
    ytr = np.asarray(y_train, dtype=np.float64)
    up_tr = x_train[:, RET_1, -1] > 0
    p_up = float(ytr[up_tr].mean()) if up_tr.any() else 0.5
    p_dn = float(ytr[~up_tr].mean()) if (~up_tr).any() else 0.5
    return np.where(x_test[:, RET_1, -1] > 0, p_up, p_dn).astype(np.float64)


def ort_probabilities(
    onnx_path: str | Path, x: NDArray[np.float32], batch: int = 4096
) -> NDArray[np.float64]:
    """Up-probabilities of an exported student for windows x (M, F, T) via onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    out = [
        sess.run(["prob_up"], {"features": x[lo : lo + batch]})[0].reshape(-1)
        for lo in range(0, x.shape[0], batch)
    ]
    return np.concatenate(out).astype(np.float64)


def ort_head_probabilities(
    onnx_path: str | Path, x: NDArray[np.float32], batch: int = 4096
) -> dict[str, NDArray[np.float64]]:
    """P(up) and P(high volatility) (M,) of an exported two-head student, keyed by head."""
    import onnxruntime as ort

    from service.model.card import HEAD_OUTPUTS, HEADS

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [HEAD_OUTPUTS[h] for h in HEADS]
    parts = [sess.run(names, {"features": x[lo : lo + batch]}) for lo in range(0, len(x), batch)]
    return {
        h: np.concatenate([p[k].reshape(-1) for p in parts]).astype(np.float64)
        for k, h in enumerate(HEADS)
    }


def _held_out_windows(
    card: dict[str, Any], symbol: str, interval: str
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float64]]:
    """Windows (M, F, T), both labels (M, H) and next-bar returns after the card's training
    data (its test span on), computed per contiguous run of bars."""
    from training.data.dataset import load_series

    s = load_series(symbol, interval)
    test_from = int(card.get("data_span", {}).get("test_first_ms", 0))
    ends = s.ends[s.start[s.ends] >= test_from]
    x = fx.make_windows(s.feats, ends)
    nxt = s.close[np.minimum(ends + 1, len(s.close) - 1)] / s.close[ends] - 1.0
    return x, s.labels[ends].astype(np.int64), nxt


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: score an exported student on the held-out part of the bundled data."""
    ap = argparse.ArgumentParser(prog="python -m training evaluate", description=__doc__)
    ap.add_argument("--model", default="models/student_pooled_5m.onnx", help="exported .onnx")
    ap.add_argument("--symbol", default=None, help="default: every symbol on the card")
    ap.add_argument("--interval", default=None, help="default: the card's interval")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    model = Path(args.model)
    card = json.loads(model.with_suffix(".json").read_text())
    symbols = [args.symbol] if args.symbol else list(card["symbols"])
    interval = args.interval or card["interval"]
    status = 0
    results = []
    for symbol in symbols:
        x, y, _ = _held_out_windows(card, symbol, interval)
        probs = ort_head_probabilities(model, x)
        rep = head_reports(y, probs)
        results.append(
            {
                "model": str(model),
                "symbol": symbol,
                "interval": interval,
                "metrics": rep,
            }
        )
        if not args.json:
            print(f"{model} on {symbol} {interval}m, {len(y)} held-out bars")
            for head, m in rep.items():
                print("  " + head + ": " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
            print("  trading it: python -m training backtest --model " + str(model))
        try:  # the alarm is for next-bar direction only: volatility has real signal
            leakage_check(f"{model} ({symbol})", y[:, 0], probs["direction"])
        except LeakageAlarm as exc:
            print(f"WARNING: {exc}", file=sys.stderr)
            status = 2
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return status
