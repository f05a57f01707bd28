"""Seeded comparisons: every pruned configuration against the swept single methods at its own
MACs (`equal_mac_comparison`) and against the baseline (`baseline_drops`), seed by seed with
paired 95 % t intervals (`study.stats`), and their Markdown (`equal_mac_markdown`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitprune.methods import registry
from vitprune.study import stats
from vitprune.study.results import COMBINATIONS, fold_seeds, is_model_row, is_trained, method_rank, seed_of
from vitprune.study.table1 import REFERENCE_ROWS, STUDY, STUDY_BASELINE

STUDY_METHOD = "dynamicvit"  # the token method whose drops the study reports (table1.STUDY)


def swept_methods(runs: list[dict[str, Any]]) -> list[str]:
    """The single methods a profile sweeps over a compute knob: registered, trained, with pruned
    rows at two or more MACs (in table order)."""
    macs: dict[str, set] = {}
    for r in runs:
        m = r["metrics"]
        if m.get("method") in registry.METHODS and is_trained(m) and is_model_row(m) and not is_control(m):
            macs.setdefault(m["method"], set()).add(float(m["macs"]))
    return sorted((name for name, points in macs.items() if len(points) >= 2), key=method_rank)


def is_control(m: dict[str, Any]) -> bool:
    """A control row: a fine-tune recipe run with nothing pruned (`control: true` in its metrics)."""
    return bool(m.get("control"))


def control_key(m: dict[str, Any]) -> str | None:
    """Which control a row is read against: the one its methods share (`shared_control`, the plain
    fine-tune of EViT and ToMe), else its own method's."""
    return m.get("shared_control") or m.get("method")


def interpolate_top1(points: list[tuple[float, float]], macs: float) -> float | None:
    """Top-1 of a method's sweep at `macs`, linear in MACs between the two sweep points around
    it (points: (MACs, top-1)); None outside the sweep's MAC range (no extrapolation)."""
    pts = sorted(points)
    if len(pts) < 1 or not pts[0][0] <= macs <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= macs <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (macs - x0) / (x1 - x0)
    return pts[0][1]  # a single point exactly at macs


def _seed_sweeps(runs: list[dict[str, Any]], swept: list[str]) -> dict[Any, dict[str, list[tuple[float, float]]]]:
    """{seed: {swept method: [(MACs, top-1), ...]}}: each seed's sweep of each of the `swept` methods."""
    out: dict[Any, dict[str, list[tuple[float, float]]]] = {}
    for r in runs:
        m = r["metrics"]
        if m.get("method") in swept and is_model_row(m) and not is_control(m):
            out.setdefault(seed_of(r), {}).setdefault(m["method"], []).append((float(m["macs"]), float(m["top1"])))
    return out


def equal_mac_comparison(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pruned configuration (not the baseline, not a control) against the swept single methods
    at its own MACs, seed by seed.

    For each configuration and each swept method other than its own, at every seed both have:
    the top-1 that method's sweep of the same seed reaches at the configuration's MACs
    (`interpolate_top1`, None outside the sweep), and the paired difference (configuration minus
    method). The differences give `vs[method]`: {at_macs (mean), n, mean, std, low, high (95 %
    t interval, `stats.paired_interval`), verdict}. `margin` is the same against the best method
    at each seed. Keys `<method>_top1_at_macs` and `margin` (means) keep the one-seed reading."""
    swept = swept_methods(runs)
    sweeps = _seed_sweeps(runs, swept)
    out = []
    for point in fold_seeds([r for r in runs if is_model_row(r["metrics"])]):
        m = point["metrics"]
        if m.get("method") == "baseline" or is_control(m):
            continue
        entry = {"label": m.get("label", ""), "method": m.get("method", ""), "run": point["run"],
                 "macs": float(m["macs"]), "top1": float(m["top1"]), "top1_std": m.get("top1_std"),
                 "n_seeds": m.get("n_seeds", 1), "trained": m.get("trained", True), "vs": {}}
        best: list[float] = []
        # an untrained row (evaluated at one seed) is the same at every seed: set against each seed's sweep
        pairs = [(seed_of(r), r) for r in point["seed_runs"]] if m.get("trained", True) else \
            [(seed, point["seed_runs"][0]) for seed in sorted(sweeps, key=lambda s: (s is None, s or 0))]
        for method in swept:
            diffs, ats = [], []
            for seed, r in pairs:
                pts = sweeps.get(seed, {}).get(method, [])
                at = interpolate_top1(pts, float(r["metrics"]["macs"])) if len(pts) >= 2 else None
                if at is not None:
                    ats.append(at)
                    diffs.append(float(r["metrics"]["top1"]) - at)
            own = method == m.get("method")
            entry[f"{method}_top1_at_macs"] = stats.summary(ats)["mean"] if ats else None
            if diffs and not own:
                interval = stats.paired_interval(diffs)
                entry["vs"][method] = {**interval, "at_macs": stats.summary(ats)["mean"],
                                       "verdict": stats.verdict(interval)}
        for seed, r in pairs:  # against the best single method at each seed
            covered = [interpolate_top1(pts, float(r["metrics"]["macs"]))
                       for method, pts in sweeps.get(seed, {}).items()
                       if method != m.get("method") and len(pts) >= 2]
            covered = [c for c in covered if c is not None]
            if covered:
                best.append(float(r["metrics"]["top1"]) - max(covered))
        entry["margin_interval"] = stats.paired_interval(best) if best else None
        entry["margin"] = entry["margin_interval"]["mean"] if best else None
        out.append(entry)
    return sorted(out, key=lambda row: (method_rank(row["method"]), row["macs"]))


def matched_contests(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row fine-tuned at another method's MACs (notebook 02's `match_macs_of`: EViT and ToMe at
    DynamicViT ρ 0.7's) against that method's row, paired by seed: the reference's top-1 minus the
    row's (positive: the reference, e.g. DynamicViT's learned predictor, does better at these MACs),
    as mean, 95 % t interval and verdict (`stats.verdict`, from the reference's side)."""
    points = [p for p in fold_seeds([r for r in runs if is_model_row(r["metrics"])]) if not is_control(p["metrics"])]
    named = {(p["metrics"].get("method"), p["metrics"].get("label")): p for p in points}
    out = []
    for point in points:
        m = point["metrics"]
        reference = named.get((m.get("matched_method"), m.get("matched_label")))
        if reference is None:
            continue
        theirs = {seed_of(r): float(r["metrics"]["top1"]) for r in reference["seed_runs"]}
        diffs = [theirs[seed_of(r)] - float(r["metrics"]["top1"]) for r in point["seed_runs"] if seed_of(r) in theirs]
        if not diffs:
            continue
        interval = stats.paired_interval(diffs)
        ref = reference["metrics"]
        out.append({"label": m["label"], "method": m["method"], "macs": float(m["macs"]), "top1": float(m["top1"]),
                    "top1_std": m.get("top1_std"), "reference": ref["label"], "reference_macs": float(ref["macs"]),
                    "reference_top1": float(ref["top1"]), "reference_top1_std": ref.get("top1_std"),
                    **interval, "verdict": stats.verdict(interval)})
    return sorted(out, key=lambda row: (method_rank(row["method"]), row["macs"]))


def _contest_markdown(contests: list[dict[str, Any]]) -> list[str]:
    """The matched rows (`matched_contests`) as Markdown lines."""
    def top1(value, std):
        return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "") + " %"

    lines = ["## At the same MACs, fine-tuned the same way", ""]
    for c in contests:
        if c["low"] is None:
            said = f"{c['mean']:+.2f} points (one seed, no interval)"
        else:
            said = (f"{abs(c['mean']):.2f} points {VERDICT_WORDS[c['verdict']]} it" if c["verdict"] in VERDICT_WORDS
                    else "not distinguishable from it") + f" ({stats.format_interval(c)}, {c['n']} seeds)"
        lines.append(f"- {c['reference']} ({c['reference_macs'] / 1e6:.2f} M MACs, "
                     f"{top1(c['reference_top1'], c['reference_top1_std'])}) against {c['label']} "
                     f"({c['macs'] / 1e6:.2f} M MACs, {top1(c['top1'], c['top1_std'])}): {said}.")
    return lines + ["", "Each row was fine-tuned with the reference's recipe (learning rates, warm-up, budget, seed, "
                    "logit distillation from the baseline) without the reference's own loss terms, at the MACs "
                    "closest to the reference's; the difference is the reference's top-1 minus the row's, seed by "
                    "seed, as mean [95 % Student t interval].", ""]


def study_drop(base_rate: float = 0.7) -> float | None:
    """The study's own small-scale DynamicViT drop: DyViT-Sub/<rate> minus its DeiT-B row (points)."""
    rows = {r["model"]: r for r in REFERENCE_ROWS if r["source"] == STUDY}
    sub, base = rows.get(f"DyViT-Sub/{base_rate:g}"), rows.get(STUDY_BASELINE)
    return None if sub is None or base is None else sub["top1"] - base["top1"]


def baseline_drops(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every trained configuration's top-1 minus the baseline's, seed by seed, with the 95 % t
    interval of the mean drop; a pruned row also against its control (the same method's run with
    nothing pruned, same recipe, budget and seed: `control`, the same kind of interval, paired by
    seed; None without a control run of every seed). The cost of pruning is the drop against the
    control; the drop against the baseline is what the study reports (DynamicViT rows at a rate the
    study ran carry its drop and whether our interval holds it). The baseline is one run (the start
    of every seed), so its intervals hold the fine-tunes' spread only."""
    base = [r["metrics"] for r in runs if r["metrics"].get("method") == "baseline" and is_model_row(r["metrics"])]
    if not base:
        return []
    base_top1 = float(base[0]["top1"])
    points = fold_seeds([r for r in runs if is_model_row(r["metrics"])])
    controls = {(control_key(r["metrics"]), seed_of(r)): float(r["metrics"]["top1"])
                for point in points if is_control(point["metrics"]) for r in point["seed_runs"]}
    out = []
    for point in points:
        m = point["metrics"]
        if m.get("method") == "baseline" or not m.get("trained", True):
            continue
        interval = stats.paired_interval([float(r["metrics"]["top1"]) - base_top1 for r in point["seed_runs"]])
        row = {"label": m.get("label", ""), "method": m.get("method"), "run": point["run"], "macs": float(m["macs"]),
               "baseline_top1": base_top1, "is_control": is_control(m), "control": None, **interval}
        paired = [(r, controls.get((control_key(m), seed_of(r)))) for r in point["seed_runs"]]
        if not is_control(m) and paired and all(c is not None for _, c in paired):
            row["control"] = stats.paired_interval([float(r["metrics"]["top1"]) - c for r, c in paired])
        rate = m.get("base_rate")
        if m.get("method") == STUDY_METHOD and not is_control(m) and rate is not None and \
                (m.get("schedule") or "geometric") == "geometric":
            reported = study_drop(float(rate))
            if reported is not None:
                row.update(study_drop=reported, holds_study_drop=stats.contains(interval, reported))
        out.append(row)
    return sorted(out, key=lambda row: (method_rank(row["method"]), not row["is_control"], -row["macs"]))


VERDICT_WORDS = {"better": "above", "worse": "below"}


def _drops_markdown(drops: list[dict[str, Any]]) -> list[str]:
    """The drops against the baseline and the control (`baseline_drops`), as Markdown lines."""
    lines = ["## Against the baseline and against the control", "",
             "| row | MACs (M) | top-1 − baseline, mean [95 % interval] | top-1 − control: the cost of pruning "
             "| seeds | the study's drop |", "|---|---:|---:|---:|---:|---|"]
    for d in drops:
        study = "—"
        if "study_drop" in d:
            held = d["holds_study_drop"]
            study = f"{d['study_drop']:+.2f}: " + ("one seed, no interval" if held is None else
                                                   "inside our interval" if held else "outside our interval")
        versus_control = ("(the control)" if d["is_control"] else
                          "no control run" if d["control"] is None else stats.format_interval(d["control"]))
        lines.append(f"| {d['label']} | {d['macs'] / 1e6:.2f} | {stats.format_interval(d)} | {versus_control} "
                     f"| {d['n']} | {study} |")
    return lines + ["", "Baseline: one run (top-1 {:.2f} %), the start of every fine-tune. A control is its method's "
                    "fine-tune with nothing pruned (same recipe, budget and seed): its own drop is what the fine-tune "
                    "alone does, and a row minus its control, seed by seed, is what pruning costs. Intervals: "
                    "Student's t over the fine-tune seeds.".format(drops[0]["baseline_top1"]), ""]


def equal_mac_markdown(rows: list[dict[str, Any]], drops: list[dict[str, Any]] | None = None,
                       contests: list[dict[str, Any]] | None = None) -> str:
    """The comparisons as Markdown: drops against the baseline (with the study's), the rows matched
    to another's MACs against it (`contests`), then every row against both sweeps at equal MACs, each
    a paired difference with its 95 % interval and a verdict that says 'not distinguishable' when
    the interval holds 0."""
    def pct(v):
        return "—" if v is None else f"{v:.2f}"

    def versus(r, method):
        v = r["vs"].get(method)
        if v is None:
            return pct(r.get(f"{method}_top1_at_macs"))
        verdict = "" if v["low"] is None else f" {v['verdict']}"
        return f"{v['at_macs']:.2f}; {stats.format_interval(v)}{verdict}"

    lines = (_drops_markdown(drops) if drops else []) + (_contest_markdown(contests) if contests else [])
    swept = [k[:-len("_top1_at_macs")] for k in (rows[0] if rows else {}) if k.endswith("_top1_at_macs")]
    lines += ["## At equal MACs", "",
              "| row | method | MACs (M) | top-1 % | seeds | "
              + "".join(f"{registry.get(s).label} at these MACs; row − it | " for s in swept).rstrip(),
              "|---|---|---:|---:|---:|" + "---|" * len(swept)]
    for r in rows:
        spread = f"{r['top1']:.2f}" + (f" ± {r['top1_std']:.2f}" if r.get("top1_std") is not None else "")
        seeds = str(r["n_seeds"]) if r.get("trained", True) else "no training"
        lines.append(f"| {r['label']} | {r['method']} | {r['macs'] / 1e6:.2f} | {spread} | {seeds} | "
                     + "".join(f"{versus(r, s)} | " for s in swept).rstrip())
    lines.append("")
    lines.append("Each sweep is interpolated linearly in MACs between its two neighbouring runs of the same seed "
                 "(— = outside its MAC range, never extrapolated); a difference is the row's top-1 minus that, seed by "
                 "seed, as mean [95 % Student t interval] over the seeds; better / worse only when the interval "
                 "excludes 0.")
    combos = [r for r in rows if r["method"] in COMBINATIONS]
    for r in combos:
        if not r["vs"]:
            lines.append(f"- {r['label']}: no single-method sweep reaches {r['macs'] / 1e6:.2f} M MACs, "
                         "so no equal-MAC comparison.")
            continue
        parts = []
        for method, v in r["vs"].items():
            name = registry.get(method).label
            if v["verdict"] in VERDICT_WORDS:
                parts.append(f"{abs(v['mean']):.2f} points {VERDICT_WORDS[v['verdict']]} {name} "
                             f"({stats.format_interval(v)})")
            elif v["low"] is None:
                parts.append(f"{v['mean']:+.2f} points against {name} (one seed, no interval)")
            else:
                parts.append(f"not distinguishable from {name} ({stats.format_interval(v)})")
        lines.append(f"- {r['label']} ({r['top1']:.2f} % at {r['macs'] / 1e6:.2f} M MACs, {r['n_seeds']} seed(s)): "
                     + "; ".join(parts) + ".")
    if combos:
        wins = [r for r in combos if r["vs"] and all(v["verdict"] == "better" for v in r["vs"].values())]
        lines.append(f"- The combination Pareto-dominates here: {'yes' if wins and len(wins) == len(combos) else 'no'} "
                     f"({len(wins)} of {len(combos)} orders beat every single method their MACs reach, by an interval "
                     "that excludes 0).")
    return "\n".join(lines) + "\n"


def write_equal_macs(rows: list[dict[str, Any]], out_dir: str | os.PathLike,
                     drops: list[dict[str, Any]] | None = None, contests: list[dict[str, Any]] | None = None) -> Path:
    """equal_macs.md in `out_dir` (atomic)."""
    path = Path(out_dir) / "equal_macs.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Seeded comparisons: against the baseline and at equal MACs\n\n"
                   + equal_mac_markdown(rows, drops, contests))
    os.replace(tmp, path)
    return path

