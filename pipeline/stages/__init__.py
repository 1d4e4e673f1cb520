"""The four stages, one module and one verb each: train, evaluate, export, infer.

pipeline/job.py chains them for one job. A stage never imports pipeline.tracking: it returns its
result, and what it reports as it goes goes out through a callable it is given, so tests run the
stages without a store.
"""
