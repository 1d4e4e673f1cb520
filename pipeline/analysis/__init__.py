"""Comparing finished runs: the sweep report (tables, plots) and the promotion rule."""
