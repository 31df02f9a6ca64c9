"""The candle path: closed kline → incremental features → window → student → stored signal.

``candle_loop`` runs it on its own thread; may import ``features``, ``market``, ``model`` and
``metrics``.
"""
