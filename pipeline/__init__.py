"""Mixed-precision train -> evaluate -> export -> infer pipeline, swept by Hydra, tracked in MLflow."""


class PipelineError(RuntimeError):
    """A problem the user can fix (missing data, a diverging run): reported as one line, exit 1."""
