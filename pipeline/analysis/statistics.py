"""Means with their uncertainty, for verdicts that survive run-to-run noise.

Repeats of a configuration differ only in train.seed. A reduced-precision job is paired with the
float32 job of the same model, batch size, learning rate and seed: the same initial weights and
data order, so the pair shares most of its noise and the paired difference isolates the policy.

- Δaccuracy: the mean of the paired differences, with Student's t interval (n - 1 degrees of
  freedom). Assumes the pairs are independent and their differences roughly normal; with 3 seeds
  the interval is wide (t = 4.30), as it should be.
- Speedup: the geometric mean of the paired throughput ratios, with the t interval taken on their
  logarithms and mapped back (ratios are multiplicative and skewed; their logs are closer to
  normal), so the interval is asymmetric around the mean.
- Spread of a single configuration: the sample standard deviation (n - 1).
"""

import dataclasses
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclasses.dataclass
class Estimate:
    """A mean over n values and its confidence interval (None when n < 2)."""

    mean: float
    n: int
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None


def mean_interval(values, confidence: float = CONFIDENCE) -> Estimate | None:
    """The mean of `values` with Student's t confidence interval; None for no values."""
    values = np.asarray([value for value in values if value is not None], dtype=float)
    if values.size == 0:
        return None
    mean = float(values.mean())
    if values.size < 2:
        return Estimate(mean, 1)
    half_width = float(stats.t.ppf((1 + confidence) / 2, values.size - 1) * stats.sem(values))
    return Estimate(mean, int(values.size), mean - half_width, mean + half_width)


def ratio_interval(ratios, confidence: float = CONFIDENCE) -> Estimate | None:
    """The geometric mean of positive `ratios` with a t interval on their logarithms, mapped back."""
    ratios = [ratio for ratio in ratios if ratio is not None and ratio > 0]
    if len(ratios) < 2:
        return Estimate(ratios[0], 1) if ratios else None
    logs = mean_interval([math.log(ratio) for ratio in ratios], confidence)
    return Estimate(math.exp(logs.mean), logs.n, math.exp(logs.low), math.exp(logs.high))


def ratio(value, baseline) -> float | None:
    """value / baseline for a pair, None where either is missing (or the baseline is 0)."""
    return None if value is None or not baseline else value / baseline


def standard_deviation(values) -> float | None:
    values = [value for value in values if value is not None]
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def accuracy_verdict(delta: Estimate | None) -> str:
    """Words for a paired Δaccuracy estimate."""
    if delta is None:
        return "-"
    if not delta.has_interval:
        return "not enough repeats"
    if delta.high < 0:
        return "costs accuracy"
    if delta.low > 0:
        return "gains accuracy"
    return "no accuracy cost detected"
