"""Everything that talks to MLflow, and nothing else: the store, a job's run, logged models, a sweep's
parent and child runs, and the model registry. It imports neither the stages nor the analysis nor the
console: what it records is computed and rendered by its callers (pipeline/job.py and the commands).
"""
