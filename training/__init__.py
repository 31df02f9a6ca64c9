"""Offline training: teacher/student networks, feature distillation, evaluation, ONNX export.

Packages, lowest first: ``data`` and ``nets``, ``distill``, ``scoring``, ``experiments``,
then ``export`` and ``report``. Entry point: ``python -m training <command>`` (``--help``).
"""
