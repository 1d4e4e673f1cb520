"""The core: data, the model definitions, precision policies, the device and tf.distribute.

Knows nothing of MLflow or of the stages; the stages and the commands build on it.
"""
