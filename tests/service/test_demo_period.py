"""make demo replays out of sample by default (issue 28): the period comes from the card."""

from __future__ import annotations

from pathlib import Path

from service.demo import _when, replay_period
from service.model.card import ModelCard
from service.replay import ReplayConfig, ReplayExchange

CARD = ModelCard.load(Path(__file__).resolve().parents[2] / "models" / "student_pooled_5m.json")
STEP = 300_000


def test_the_default_period_is_the_cards_test_span_after_validation() -> None:
    start, text = replay_period(CARD, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], None, None, STEP)
    assert start == CARD.data_span["test_first_ms"]
    assert start > CARD.data_span["val_last_ms"]
    assert text.startswith("Out of sample")


def test_a_period_inside_training_says_in_sample() -> None:
    start, text = replay_period(CARD, ["BTCUSDT"], _when("2025-04-07"), None, STEP)
    assert start == _when("2025-04-07")
    assert text.startswith("IN SAMPLE") and "training" in text


def test_the_bundled_alts_of_nov_2025_are_out_of_sample_and_replayable() -> None:
    nov = _when("2025-11-10")
    _, text = replay_period(CARD, ["XRPUSDT", "ADAUSDT"], nov, _when("2025-11-20"), STEP)
    assert text.startswith("Out of sample")
    ex = ReplayExchange(ReplayConfig(symbols=("XRPUSDT", "ADAUSDT"), start_ms=nov))
    for tape in ex.tapes.values():  # the Nov file, not XRP's earliest (April) one
        assert int(tape.table.start[0]) <= nov <= int(tape.table.start[-1])
