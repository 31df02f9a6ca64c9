"""Malformed frames the replay exchange can inject before a real push.

Each variant is something a parser must count and skip: broken JSON, wrong shapes, wrong
types, impossible values, a topic nobody subscribed to. None of them is a plausible-looking
candle with wrong numbers (no client could tell that from the truth).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any


def _mutate_item(frame: str, fn: Callable[[dict[str, Any]], None]) -> str:
    msg = json.loads(frame)
    fn(msg["data"][0])
    return json.dumps(msg, separators=(",", ":"))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(item: dict[str, Any]) -> None:
        item[key] = value

    return apply


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def apply(item: dict[str, Any]) -> None:
        item.pop(key, None)

    return apply


def _swap_high_low(item: dict[str, Any]) -> None:
    item["high"], item["low"] = item["low"], str(float(item["high"]) * 2)


def malformed_frame(rng: random.Random, topic: str, frame: str) -> str | bytes:
    """One malformed frame derived from the real push ``frame`` (chosen by ``rng``)."""
    variants: list[Callable[[], str | bytes]] = [
        lambda: "this is not json {",
        lambda: frame[: max(1, len(frame) // 2)],
        lambda: b"\xff\xfe\x00garbage",
        lambda: json.dumps({"topic": topic, "data": {"start": 0}, "ts": 1, "type": "snapshot"}),
        lambda: json.dumps({"topic": topic, "data": [], "ts": 1, "type": "snapshot"}),
        lambda: json.dumps([1, 2, 3]),
        lambda: _mutate_item(frame, _set("open", 123.4)),  # a float, not a string
        lambda: _mutate_item(frame, _set("close", "-1")),
        lambda: _mutate_item(frame, _set("volume", "NaN")),
        lambda: _mutate_item(frame, _set("confirm", "true")),
        lambda: _mutate_item(frame, _drop("start")),
        lambda: _mutate_item(frame, _set("start", "1672324800000")),
        lambda: _mutate_item(frame, _swap_high_low),
        lambda: frame.replace(topic, "kline.5.NOSUCHUSDT"),
        lambda: frame.replace(f'"topic":"{topic}"', '"topic":"orderbook.50.BTCUSDT"'),
    ]
    return rng.choice(variants)()
