"""Scoring on held-out bars: per-head metrics, paired statistics, backtest, evaluate, audit.

May import ``data`` and ``nets`` (the audit's ensemble); never ``experiments`` or ``report``.
"""
