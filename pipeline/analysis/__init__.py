"""Comparing finished runs, without MLflow: the sweep's comparison (comparison.py) with its statistics,
text (summary.py) and plots, the deployment table, and the promotion rule (champion.py)."""
