"""Seed statistics: a trained row is a distribution over fine-tune seeds, not one number.

`summary` gives mean, sample standard deviation and n of a row's top-1 over its seeds.
`paired_interval` compares two methods by the difference of their top-1 at the same seed
(the runs of one seed share the fine-tuning subset, its order and the baseline they start
from) with Student's t interval for the mean difference: with n = 3 to 5 seeds nothing else
is estimable, the t interval is exact when the seed-to-seed differences are normal, and it
widens honestly with few seeds (t(0.975, 2) = 4.30). `verdict` reads the interval: *better*
or *worse* only when it excludes 0, else *not distinguishable*.

What the interval does not hold: every run is evaluated on the same test images, so it
covers training noise (seeds), not test-set sampling (on 10k images at ~88 % top-1, about
0.33 points of standard error per model, which largely cancels in a paired difference on the
same images).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

CONFIDENCE = 0.95


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, mean and sample std (ddof 1; None for a single value) of `values`."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summary of no values")
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std}


def t_critical(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t quantile for a mean of `n` values (n - 1 degrees of freedom)."""
    from scipy import stats as sps

    return float(sps.t.ppf(0.5 + confidence / 2, n - 1))


def paired_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean of per-seed differences with its t interval: {n, mean, std, low, high, confidence}
    (low/high None below two seeds: one difference has no spread to go on)."""
    out = summary(differences)
    out.update(confidence=confidence, low=None, high=None)
    if out["n"] >= 2:
        half = t_critical(out["n"], confidence) * out["std"] / math.sqrt(out["n"])
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def verdict(interval: dict[str, Any]) -> str:
    """'better' / 'worse' when the interval lies above / below 0, else 'not distinguishable';
    'one seed' when there is no interval."""
    if interval.get("low") is None:
        return "one seed"
    if interval["low"] > 0:
        return "better"
    if interval["high"] < 0:
        return "worse"
    return "not distinguishable"


def contains(interval: dict[str, Any], value: float) -> bool | None:
    """Whether `value` lies inside the interval (None without one)."""
    if interval.get("low") is None:
        return None
    return interval["low"] <= value <= interval["high"]


def format_interval(interval: dict[str, Any], digits: int = 2) -> str:
    """"+0.51 [-1.20, +2.22]" (or "+0.51 (one seed)")."""
    mean = f"{interval['mean']:+.{digits}f}"
    if interval.get("low") is None:
        return f"{mean} (one seed)"
    return f"{mean} [{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]"
