"""The pre-registered feature-vs-KD test pooled over B's alts."""

from __future__ import annotations

import numpy as np

from training.experiments.results import SettingResult
from training.report.equivalence import answer, feature_test, render
from training.scoring.stats import DAY_MS


def _alt(key: str, seed: int, shift: float) -> SettingResult:
    rng = np.random.default_rng(seed)
    n = 4000
    y = np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], axis=1)
    res = SettingResult(key, key, "", y, (np.arange(n) // 100) * DAY_MS)
    base = y[:, 1] + rng.normal(0, 1.5, n)
    for _s in range(3):
        kd = base + rng.normal(0, 0.02, n)
        res.add("kd (pooled teacher)", {"direction": rng.random(n), "volatility": kd})
        att = base + rng.normal(0, 0.02, n)
        res.add("attention (pooled teacher)", {"direction": rng.random(n), "volatility": att})
        bad = base + rng.normal(0, shift, n)
        res.add("fitnet (pooled teacher)", {"direction": rng.random(n), "volatility": bad})
    return res


def test_feature_test_verdicts_and_text() -> None:
    bs = [_alt(f"B/{s}", k, 2.5) for k, s in enumerate(("XRPUSDT", "BNBUSDT", "ADAUSDT"))]
    ft = feature_test(bs, ("attention", "fitnet"), 0.002, 300)
    assert ft["alts"] == ["XRPUSDT", "BNBUSDT", "ADAUSDT"]
    by = {t["method"]: t for t in ft["tests"]}
    assert by["attention"]["pooled"]["verdict"] == "equivalent"
    assert by["fitnet"]["pooled"]["verdict"] == "worse"
    assert by["attention"]["seeds"] == 3 and len(by["fitnet"]["per_alt"]) == 3
    assert by["fitnet"]["p_tost_holm"] >= by["fitnet"]["pooled"]["p_tost"]
    assert "`attention` is equivalent to KD" in answer(ft)
    assert "| attention | all alts | 3 |" in render(ft)


def test_feature_test_without_b_is_empty() -> None:
    ft = feature_test([], ("attention",), 0.002, 10)
    assert ft["tests"] == [] and answer(ft) == "" and render(ft) == ""
