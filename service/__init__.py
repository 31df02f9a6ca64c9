"""The live signal service: Bybit klines in, the ONNX student's signals out (DESIGN 6-13).

Packages, lowest first: ``features`` (the pure leaf training shares), ``market`` and
``model``, ``pipeline``, ``paper`` and ``monitor``, then ``runtime`` (the one container) and
``http``; ``replay`` is the exchange double. None of it imports torch or ``training``.
"""
