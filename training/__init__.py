"""Offline training: teacher/student networks, feature distillation, evaluation, ONNX export.

Entry point: ``python -m training <command>`` (``--help`` lists the commands).
"""
