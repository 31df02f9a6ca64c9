"""The candle path: closed kline → incremental features → window → student → stored signal.

``scoring`` holds a burst's windows and scores them in one batched call when ``burst`` says
the burst is complete; ``candle_loop`` runs it on its own thread; may import ``features``,
``market``, ``model`` and ``metrics``.
"""
