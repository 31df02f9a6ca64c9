"""Teacher and student networks (``tcn``, ``mlp``) and the ensemble teacher.

May import ``service.model.card``, ``training.config`` and torch.
"""
