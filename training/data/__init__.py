"""Klines → feature windows, labels and chronological splits; walk-forward folds; fetching.

May import ``service.features``, ``service.market``, ``service.model``, the signal journal
and ``training.config``; no torch.
"""
