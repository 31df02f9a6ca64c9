"""Is the model still working: the signal journal, live scores, drift and the health report.

May import ``features``, ``market``, ``model``, ``pipeline`` and ``metrics``.
"""
