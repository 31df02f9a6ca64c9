"""A Bybit-compatible replay exchange on loopback (DESIGN section 9).

Run it with ``python -m service.replay --help``.
"""

from service.replay.exchange import ReplayConfig, ReplayExchange
from service.replay.faults import Faults

__all__ = ["Faults", "ReplayConfig", "ReplayExchange"]
