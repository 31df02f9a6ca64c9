"""The committed student's answer states the issue's bar with the test AUC's interval."""

from __future__ import annotations

from typing import Any

from training.report.answers import committed_answer


def _sel(lo: float, hi: float) -> dict[str, Any]:
    cand = {"channels": [8], "params": 700, "val_auc": {"volatility": 0.7155}}
    return {
        "chosen": [8],
        "held": True,
        "candidates": [cand],
        "teacher_val_auc": {"volatility": 0.7188},
        "chosen_test_auc": {"volatility": {"ci_low": lo, "ci_high": hi, "days": 9}},
    }


def _exported(auc: float) -> dict[str, Any]:
    return {"card": {"metrics": {"volatility": {"auc": auc}, "direction": {"auc": 0.53}}}}


def test_the_bar_is_met_by_the_point_estimate_only_when_the_interval_straddles_it() -> None:
    text = committed_answer(_sel(0.6905, 0.7090), _exported(0.70004))
    assert "AUC 0.7000 [0.6905, 0.7090] (9 days)" in text
    assert "met by the point estimate; the interval's lower end is 0.6905" in text


def test_the_bar_is_met_when_the_whole_interval_lies_above_it() -> None:
    assert "met, the whole interval above it" in committed_answer(
        _sel(0.7010, 0.7200), _exported(0.7100)
    )


def test_the_bar_is_not_met_below_it_and_no_size_holding_is_said() -> None:
    sel = _sel(0.6800, 0.7050) | {"held": False}
    text = committed_answer(sel, _exported(0.6986))
    assert "(the issue's bar of 0.70: not met)" in text
    assert "no size held the teacher's validation quality; the largest, [8]" in text
