"""The statistics the report uses: a paired t-test over seeds (scipy when installed, else the
exact Student-t tail below)."""

from __future__ import annotations

import math
import statistics


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer df: the exact finite series of Abramowitz &
    Stegun 26.7.3-4 (A(t|df) = P(|T| < t) as a sum of powers of cos(theta), theta = atan(t/sqrt(df)))."""
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c2
            total += term
        a = 2 / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        a = s * total
    return min(1.0, max(0.0, 1.0 - a))


def paired_t_test(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of a paired t-test; None with fewer than 2 pairs."""
    if len(a) != len(b) or len(a) < 2:
        return None
    d = [x - y for x, y in zip(a, b)]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    if sd <= 1e-12 * max(1.0, abs(mean)):  # identical differences (up to rounding): no spread to test
        return 1.0 if abs(mean) <= 1e-12 else 0.0
    try:
        from scipy.stats import ttest_rel

        return float(ttest_rel(a, b).pvalue)
    except ImportError:
        return t_two_sided_p(mean / (sd / math.sqrt(len(d))), len(d) - 1)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with integer df: scipy's ``t.ppf`` when
    installed, else bisection on the exact tail ``t_two_sided_p`` (monotone in t)."""
    try:
        from scipy.stats import t as student_t

        return float(student_t.ppf(q, df))
    except ImportError:
        pass
    target, lo, hi = 2 * (1 - q), 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t interval of the mean, mean ± t_{(1+level)/2, n-1} s / sqrt(n); None with fewer than 2
    values. Over seeds it is the interval of the seed-mean of that configuration (training noise),
    not of the dev set's sampling noise."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile((1 + level) / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values of a family (Holm 1979): the k-th smallest of m is
    multiplied by (m - k + 1), made monotone, capped at 1; ``None`` entries stay None and are not
    counted in m. Rejecting where the adjusted p < alpha controls the family-wise error at alpha."""
    tested = sorted((p, k) for k, p in pvalues.items() if p is not None)
    adjusted, running = {k: None for k in pvalues}, 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * p))
        adjusted[k] = running
    return adjusted
