"""The core: the config schemas and checks, precision policies, data, the model definitions, the
device and tf.distribute.

Knows nothing of MLflow or of the stages; everything else builds on it.
"""
