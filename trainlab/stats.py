"""Statistics over seeds for trainlab-report: mean, sample std, a 95 % confidence interval, and
Welch's t-test for "is this configuration worse than the best?".

Student's t distribution is computed here (the regularized incomplete beta function by its
continued fraction) so that the report needs neither scipy nor torch.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

LEVEL = 0.95  # the confidence of the intervals
ALPHA = 0.05  # the significance of "worse than the best"


class Summary(NamedTuple):
    """A configuration's values over its seeds; std and ci are None for a single value."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1)
    ci: float | None  # half-width of the 95 % confidence interval of the mean


def summarize(values: Sequence[float]) -> Summary | None:
    """None when there is no value."""
    if not values:
        return None
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None)
    std = statistics.stdev(values)
    return Summary(n, mean, std, t_quantile(1 - (1 - LEVEL) / 2, n - 1) * std / math.sqrt(n))


class Comparison(NamedTuple):
    """How much worse ``other`` is than ``best`` (in the metric's own direction)."""

    difference: float  # > 0: other is worse
    ci: float  # half-width of the 95 % confidence interval of the difference
    p: float  # one-sided p-value of "other is worse" (Welch's t-test)

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def compare(best: Summary, other: Summary, larger_better: bool) -> Comparison | None:
    """Welch's t-test of ``other`` against ``best``; None when either has a single value (no
    variance to judge by)."""
    if best.std is None or other.std is None:
        return None
    difference = (best.mean - other.mean) if larger_better else (other.mean - best.mean)
    a, b = best.std**2 / best.n, other.std**2 / other.n
    if a + b == 0:  # identical values in each: the same, or certainly different
        return Comparison(difference, 0.0, 1.0 if difference <= 0 else 0.0)
    df = (a + b) ** 2 / (a**2 / (best.n - 1) + b**2 / (other.n - 1))
    error = math.sqrt(a + b)
    p = 1 - t_cdf(difference / error, df)
    return Comparison(difference, t_quantile(1 - (1 - LEVEL) / 2, df) * error, p)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection (64 halvings of [-1000, 1000] reach float
    precision); cached, as a report asks for the same few many times."""
    low, high = -1e3, 1e3
    for _ in range(64):
        middle = (low + high) / 2
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):  # the continued fraction converges fast here
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result
