"""Everything that talks to MLflow: the store, a job's run, logged models, sweeps (with their Hydra
callback), the model registry and the served model.
"""
