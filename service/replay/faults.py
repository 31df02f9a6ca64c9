"""Switchable faults of the replay exchange (constructor and ``--faults`` on the CLI).

Rates are probabilities per event (per candle for candle faults, per frame for malformed
frames, per request for HTTP errors); all randomness comes from one seeded generator, so a
run with the same seed and timing injects the same faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


@dataclass(frozen=True)
class Faults:
    """What the exchange does wrong. Everything off by default (a well-behaved exchange)."""

    disconnect: float = field(
        default=0.0,
        metadata={"help": "per candle: server closes every socket (clean close or abort)"},
    )
    refuse_handshakes: int = field(
        default=0,
        metadata={"help": "after each disconnect, answer this many upgrades with HTTP 503"},
    )
    silence: float = field(
        default=0.0,
        metadata={"help": "per candle: current sockets turn zombie (no data, no JSON pongs)"},
    )
    malformed: float = field(
        default=0.0, metadata={"help": "per push: a malformed frame is sent before it"}
    )
    duplicate_confirm: float = field(
        default=0.0, metadata={"help": "per candle: the confirm=true push is sent twice"}
    )
    missing_confirm: float = field(
        default=0.0, metadata={"help": "per candle: the confirm=true push is never sent"}
    )
    combined: float = field(
        default=0.0,
        metadata={"help": "per candle: confirm and the next candle's first update in one frame"},
    )
    gap: float = field(
        default=0.0,
        metadata={"help": "per candle: no websocket push at all for that candle (REST has it)"},
    )
    reject_subscribe: float = field(
        default=0.0, metadata={"help": "per request: subscribe refused with a transient error"}
    )
    reject_topics: frozenset[str] = field(
        default_factory=frozenset,
        metadata={"help": 'topics whose subscription is refused with "handler not found"'},
    )
    void_batch: bool = field(
        default=True,
        metadata={"help": "a bad topic voids its whole subscribe batch, as on Bybit"},
    )
    http_error: float = field(
        default=0.0, metadata={"help": "per REST request: HTTP 429 or 500 instead of the answer"}
    )
    only: frozenset[str] = field(
        default_factory=frozenset,
        metadata={"help": "candle faults hit only these symbols (+-separated; empty: all)"},
    )

    @classmethod
    def all(cls) -> Faults:
        """Every fault on at rates a client must survive (used by tests and the demo)."""
        return cls(
            disconnect=0.04,
            refuse_handshakes=1,
            silence=0.02,
            malformed=0.05,
            duplicate_confirm=0.1,
            missing_confirm=0.1,
            combined=0.1,
            gap=0.05,
            reject_subscribe=0.2,
            http_error=0.2,
        )

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``"none"``, ``"all"``, or ``name=value`` pairs, e.g. ``all,gap=0.2,disconnect=0``.

        ``reject_topics`` takes ``+``-separated topics: ``reject_topics=kline.5.XRPUSDT``.
        """
        faults = cls()
        names = {f.name for f in fields(cls)}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if part == "none":
                faults = cls()
                continue
            if part == "all":
                faults = cls.all()
                continue
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in names:
                raise ValueError(
                    f"bad fault {part!r}: use none, all or name=value with name in {sorted(names)}"
                )
            parsed: object
            if name in ("reject_topics", "only"):
                parsed = frozenset(t for t in value.split("+") if t)
            elif name == "void_batch":
                parsed = value.lower() in ("1", "true", "yes", "on")
            elif name == "refuse_handshakes":
                parsed = int(value)
            else:
                parsed = float(value)
                if not 0.0 <= parsed <= 1.0:
                    raise ValueError(f"fault {name} is a probability in [0, 1], got {value}")
            faults = replace(faults, **{name: parsed})  # type: ignore[arg-type]
        return faults
