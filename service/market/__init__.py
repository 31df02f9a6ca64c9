"""The exchange side: Bybit's wire format, kline types and files, the websocket feed, REST.

Pure parsing and sequencing (``bybit``, ``klines``, ``backfill``'s sequencer) beside the thin
I/O shells (``feed``, ``rest``, ``stamped_ws``). May import ``service.metrics`` only.
"""
