"""Distillation: the losses, projection heads, the Distiller, the recipe and the training loop.

May import ``data`` and ``nets`` (and the service's pure leaves).
"""
