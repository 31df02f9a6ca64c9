"""The exchange side: Bybit's wire format, kline types and files, the websocket feed, REST.

Pure parsing and sequencing (``bybit``, ``klines``, ``sequencer``, ``log_limit``) beside the
thin I/O shells (``feed``: the socket; ``backfill``: each symbol's REST task; ``rest`` on
``http_get``; ``stamped_ws``). May import ``service.metrics`` only.
"""
