"""What the figures in `plots` share: each method's label, marker and colour, an empty figure
in the study's style, reading a run's metrics, point labels that do not overlap, and the
Pareto front.

Kept apart so that `plots` holds the figures themselves, one function each, and every figure
draws a method the same way. seaborn is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from vitprune.methods import registry
from vitprune.study.results import COMBINATIONS, method_order

def method_label(method: str) -> str:
    """How figures name a row's method: the registry's label, a combination's, or the name itself."""
    if method == "baseline":
        return "baseline"
    if method in COMBINATIONS:
        return COMBINATIONS[method][0]
    return registry.METHODS[method].label if method in registry.METHODS else method


def method_marker(method: str) -> str:
    if method == "baseline":
        return "*"
    if method in COMBINATIONS:
        return COMBINATIONS[method][1]
    return registry.METHODS[method].marker if method in registry.METHODS else "o"


def palette() -> dict[str, Any]:
    """One distinct colour per method in `method_order` (seaborn's colour-blind-safe palette; the
    baseline grey; its light pink left out, too close to its pink)."""
    import seaborn as sns

    colors = sns.color_palette("colorblind", 10)
    hues = [colors[i] for i in (0, 1, 2, 3, 4, 5, 8, 9, 6)]
    methods = [m for m in method_order() if m != "baseline"]
    return {"baseline": colors[7], **{m: hues[i % len(hues)] for i, m in enumerate(methods)}}


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.0), **kw):
    """A constrained-layout Figure and its [nrows, ncols] grid of whitegrid axes."""
    import seaborn as sns

    fig = Figure(figsize=size, layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def metric(run: dict, key: str) -> Any:
    """The run's metrics.json value for `key` (None when absent)."""
    return run["metrics"].get(key)


def is_number(value: Any) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_label(run: dict) -> str:
    """How a figure names the run: its metrics' label, else the run name."""
    return str(metric(run, "label") or run["run"])


def mac_scale(values: list[float]) -> tuple[float, str]:
    """Divide MACs by 1e9 (G) for big models, by 1e6 (M) for the small ones."""
    return (1e9, "GMACs") if max(values, default=0) >= 1e9 else (1e6, "MMACs")


def annotate_all(ax, points: list[tuple[float, float, str]]) -> None:
    """Label scatter points; a label near an earlier one is pushed down a line so close
    points (two combinations at similar MACs) stay readable."""
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx = (max(xs) - min(xs)) or 1.0
    dy = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        crowd = sum(abs(x - px) < 0.12 * dx and abs(y - py) < 0.06 * dy for px, py in placed)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4 - 9 * crowd), fontsize=7)
        placed.append((x, y))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats: lower or equal cost with
    higher accuracy. Returned in order of increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
