"""The served student: its model card (the schema training writes) and the ONNX predictor.

May import ``service.features`` only; ``training`` imports ``card`` from here.
"""
