"""The exchange side: Bybit's wire format, kline types and files, the websocket feed, REST.

Pure parsing, sequencing and limits (``bybit``, ``klines``, ``sequencer``, ``limits``: the
connection plan and the REST token bucket, ``log_limit``) beside the thin I/O shells
(``feed``: the symbols and their lanes; ``connection``: one socket, its reader and its
processing task; ``backfill``: each symbol's REST task; ``rest`` on ``http_get``;
``stamped_ws``). May import ``service.metrics`` only.
"""
