"""The served model: the exported SavedModel or LiteRT file behind input checks, as an MLflow pyfunc
model (classifier.py), and LiteRT's interpreter (litert.py), which the infer stage measures with too.

MLflow loads it in the serving process from model_code.py; it imports nothing of training or tracking.
"""
