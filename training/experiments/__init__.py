"""The pre-registered study's settings: one module per experiment, fits and their results.

May import ``data``, ``nets``, ``distill`` and ``scoring``; never ``report``.
"""
