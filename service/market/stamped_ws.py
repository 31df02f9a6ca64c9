"""A websocket client connection that stamps each message when its last bytes are read.

``recv()`` returns a message only when the reading task runs again, which may be well after
the event loop read the bytes off the socket (other ready callbacks run first). The feed
stamps frames with :func:`arrival_ns` instead, the ``perf_counter_ns()`` at the
``data_received`` call that completed the message, so ``apprentice_signal_latency_seconds``
includes that wait. What it still cannot see: the kernel's queueing before the loop reads.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import DATA_OPCODES, Frame


class StampedConnection(ClientConnection):
    """:class:`ClientConnection` that queues one read time per complete data message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # one entry per message not yet returned by recv(), in order; as bounded as the
        # connection's own message queue (websockets pauses reading when that is full)
        self.arrivals: deque[int] = deque()
        self._read_ns = 0

    def data_received(self, data: bytes) -> None:
        self._read_ns = time.perf_counter_ns()
        super().data_received(data)

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
            self.arrivals.append(self._read_ns)
        super().process_event(event)


def arrival_ns(ws: ClientConnection) -> int:
    """When the message ``recv()`` just returned was read off the socket (now, if unknown)."""
    if isinstance(ws, StampedConnection) and ws.arrivals:
        return ws.arrivals.popleft()
    return time.perf_counter_ns()
