"""Apprentice benchmarks: ``python -m bench`` measures and rewrites BENCHMARKS.md.

One module per section (inference, features, end to end, HTTP, training) plus the
hot-path profile; comparisons inside a section are interleaved in one run, and the
gates are ratios, because this shared machine's absolute times drift.
"""
