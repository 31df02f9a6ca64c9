"""``GET /signal``'s body: each signal's JSON encoded once, its two per-request fields spliced in.

FastAPI's answer for a ``response_model`` route validates the returned :class:`SignalOut`
and serialises it with pydantic on every request; the HTTP benchmark priced that pass at
about a third of the route's throughput. A signal changes once per candle, and of its
fields only ``age_seconds`` and ``stale`` depend on when it is read. :class:`SignalBodies`
therefore keeps, per symbol, the newest signal's JSON split around those two fields —
encoded by the same pydantic serialiser FastAPI uses, so the bytes are the same — and a
request only encodes one float. The OpenAPI schema still states ``SignalOut`` (the route
keeps ``response_model``). Used on the API's thread only (the candle thread stores
signals; this reads them), so it needs no lock.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import TypeAdapter

from service.http.schemas import SignalOut
from service.pipeline.signals import Signal

# Placeholders for the request-time fields, found once in the encoded body and cut out.
_MARK = b'"age_seconds":0.0,"stale":false,'
_OUT = TypeAdapter(SignalOut)
_FLOAT = TypeAdapter(float)  # pydantic's float spelling (1e-5, not Python's 1e-05)


class _Encoded(NamedTuple):
    signal: Signal
    head: bytes  # b'{"symbol":...,"generated_at":"...","age_seconds":'
    tail: bytes  # b'"model":{...},"latency_us":{...}}'


class SignalBodies:
    """Per symbol: the newest signal's JSON halves; :meth:`body` adds age and staleness."""

    def __init__(self, regime_threshold: float) -> None:
        self.regime_threshold = regime_threshold
        self._cache: dict[str, _Encoded] = {}
        self.encoded = 0  # signals encoded (one per new signal that was asked for)

    def body(self, signal: Signal, age_seconds: float, stale: bool) -> bytes:
        """The JSON ``FastAPI`` would answer for ``SignalOut.of(signal, age, stale, ...)``."""
        enc = self._cache.get(signal.symbol)
        if enc is None or enc.signal is not signal:
            enc = self._encode(signal)
        return b"".join(
            (
                enc.head,
                _FLOAT.dump_json(round(age_seconds, 6)),
                b',"stale":true,' if stale else b',"stale":false,',
                enc.tail,
            )
        )

    def _encode(self, signal: Signal) -> _Encoded:
        out = SignalOut.of(signal, 0.0, False, self.regime_threshold)
        raw = _OUT.dump_json(out)
        # symbol, interval, direction, action, regime and generated_at come before the mark
        # and cannot hold an unescaped quote, so its first occurrence is the field itself
        i = raw.index(_MARK)
        enc = _Encoded(signal, raw[:i] + b'"age_seconds":', raw[i + len(_MARK) :])
        self._cache[signal.symbol] = enc
        self.encoded += 1
        return enc
