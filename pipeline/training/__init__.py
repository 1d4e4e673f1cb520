"""What the train stage is made of: the compiled steps and their optimizer (steps.py), the choice of
compilation mode (compile_mode.py), each step's batch (batch_order.py), checkpoints, and the models a
process keeps across a sweep's jobs (kept_models.py). Nothing here imports MLflow.
"""
