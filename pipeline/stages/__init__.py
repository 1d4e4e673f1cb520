"""The four stages (train, evaluate, export, infer), their compiled steps and checkpoints, and
`run.run_stages`, which chains them for one job and records each result through pipeline.tracking.

The stage modules themselves never import pipeline.tracking: what they report goes out through a
callable they are given, so tests run them without a store.
"""
