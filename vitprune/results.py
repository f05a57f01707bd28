"""Per-run metrics files (`metrics.json` beside each executed notebook) and Table 1.

`write_metrics`/`read_metrics` are what every notebook calls. `collect_runs` gathers a
profile's model runs (notebooks 01-04), `table1` turns them into Table 1 beside the study's
and the source papers' reported rows, `write_table1` writes it as Markdown, CSV and LaTeX,
and `table_main` is `python -m vitprune table`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vitprune import config
from vitprune.errors import UserError

METRICS_FILE = "metrics.json"


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy/torch scalars and arrays, Paths); NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write metrics.json atomically (a reader never sees half a file)."""
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise UserError(f"{path} does not exist: run the notebook that writes it first "
                        f"(python -m vitprune run --profile PROFILE --only NOTEBOOK)")
    return json.loads(path.read_text())


ROW_KEYS = ("method", "label", "model_name", "img_size", "params", "macs", "flops", "top1", "top5", "eval_samples")


def metrics_row(method: str, label: str, *, model_name: str | None, img_size: int | None,
                count: dict[str, Any], evaluation: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One model run's metrics row, with the keys `collect_runs`, Table 1 and the plots read
    (ROW_KEYS), then the run's own `extra` keys.

    `count` is `measure.count`'s dict (params; MACs per image at batch 1; FLOPs = 2 x MACs),
    `evaluation` `engine.evaluate`'s (top1/top5 in percent, num_samples). An `extra` key that
    repeats a ROW_KEYS key is an error (it would silently replace a measured value)."""
    clash = sorted(set(extra) & set(ROW_KEYS))
    if clash:
        raise ValueError(f"metrics_row: {clash} are measured from count/evaluation; do not pass them as extra keys")
    row = {"method": method, "label": label, "model_name": model_name, "img_size": img_size,
           "params": int(count["params"]), "macs": int(count["macs"]), "flops": int(count["flops"]),
           "top1": float(evaluation["top1"]), "top5": float(evaluation["top5"]),
           "eval_samples": int(evaluation["num_samples"])}
    return {**row, **extra}


def versus_baseline(count: dict[str, Any], baseline_count: dict[str, Any], baseline_top1: float | None) -> dict[str, Any]:
    """The baseline columns of a pruned run's row: baseline_params, baseline_macs,
    baseline_top1 and mac_ratio = baseline MACs / this model's MACs (> 1: cheaper)."""
    return {"baseline_params": int(baseline_count["params"]), "baseline_macs": int(baseline_count["macs"]),
            "baseline_top1": baseline_top1, "mac_ratio": baseline_count["macs"] / count["macs"]}


# ================================================================ Table 1
#
# Our measured rows come from the metrics.json files of notebooks 01-04; beside them go the
# study's Table 1 as printed and the rows of the papers it quotes, typed in once below with
# the unit each printed number really is. Units used in every column we compute:
#   params_M  = parameter count / 1e6
#   gmacs     = multiply-accumulates for one image / 1e9 (what fvcore calls "flops")
#   gflops    = 2 * gmacs
# The study's "FLOPs (G)" column mixes the two: its DeiT/DynamicViT numbers are fvcore
# counts, i.e. GMACs, while its EfficientFormer numbers are the published GMACs doubled
# (its caption: "calculated in GMACs and converted to GFLOPs"). vitprune.audit checks both
# claims against our own counts of the same architectures.

MODEL_NOTEBOOKS = ("01_deit_baseline", "02_token_pruning", "03_block_pruning", "04_combination")
METHOD_ORDER = ("baseline", "dynamicvit", "training_free", "merging", "block", "token_then_block", "block_then_token")
MEASURED = "measured"
STUDY = "study (reported)"
PAPER = "paper (reported)"
STUDY_REF = "Bui et al., Vision Transformer Pruning (the study), Table 1"
STUDY_BASELINE = "DeiT-Base/16 [13]"
PAPER_BASELINE = "DeiT-B"
DATASET_NAMES = {"fmnist": "Fashion-MNIST", "imagenet": "ImageNet-1k", "smoke": "synthetic (smoke)"}


def _ref(model, source, reference, params_M, printed_G, unit, img_size, top1, baseline, note=""):
    """One reference row. `printed_G` is the number as printed; `unit` what it really is
    ("GMACs" or "GFLOPs", GFLOPs = 2 x GMACs); None where the source gives no number."""
    return {"model": model, "source": source, "reference": reference, "params_M": params_M,
            "printed_G": printed_G, "printed_unit": unit, "img_size": img_size, "top1": top1,
            "baseline": baseline, "dataset": "ImageNet-1k", "note": note}


# fmt: off
REFERENCE_ROWS: tuple[dict[str, Any], ...] = (
    # --- the study's Table 1, exactly as printed (column "FLOPs (G)") --------------------
    _ref("ViT-Base [4]", STUDY, STUDY_REF, 86.6, 17.6, "GMACs", 224, 77.9, STUDY_BASELINE,
         "17.6 is DeiT-B's fvcore count; ViT-B/16's 77.9 % (ImageNet-1k only) is quoted by DeiT at 384x384"),
    _ref("DeiT-Base/16 [13]", STUDY, STUDY_REF, 86.6, 17.6, "GMACs", 224, 81.8, STUDY_BASELINE,
         "printed as 'FLOPs'; fvcore counts MACs"),
    _ref("EfficientFormer-L1 [16]", STUDY, STUDY_REF, 12.3, 2.6, "GFLOPs", 224, 79.2, STUDY_BASELINE,
         "published 1.3 GMACs doubled; the study's change (-15) subtracts GMACs from GFLOPs"),
    _ref("EfficientFormer-L3 [16]", STUDY, STUDY_REF, 31.3, 7.8, "GFLOPs", 224, 82.4, STUDY_BASELINE,
         "published 3.9 GMACs doubled"),
    _ref("EfficientFormer-L7 [16]", STUDY, STUDY_REF, 82.1, 20.4, "GFLOPs", 224, 83.3, STUDY_BASELINE,
         "published 10.2 GMACs doubled; the study's +2.8 vs DeiT-B is -7.4 GMACs in one unit"),
    _ref("DynamicViT-B/0.7 [9]", STUDY, STUDY_REF, None, 11.2, "GMACs", 384, 81.3, STUDY_BASELINE,
         "listed at 384x384; 11.2 is the 224x224 count (see audit)"),
    _ref("DyViT-Sub/0.7", STUDY, STUDY_REF, 89.4, 11.5, "GMACs", 224, 80.1, STUDY_BASELINE,
         "DeiT-B + DynamicViT fine-tuned 5 epochs on the first 10 % of ImageNet"),
    _ref("DyViT-Sub/0.6", STUDY, STUDY_REF, 89.4, 9.9, "GMACs", 224, 78.9, STUDY_BASELINE),
    _ref("DyViT-Sub/0.5", STUDY, STUDY_REF, 89.4, 8.6, "GMACs", 224, 74.4, STUDY_BASELINE),
    _ref("DyViT-Sub/0.4", STUDY, STUDY_REF, 89.4, 7.4, "GMACs", 224, 63.1, STUDY_BASELINE),
    # --- the source papers ----------------------------------------------------------------
    _ref("ViT-B/16", PAPER, "Dosovitskiy et al. 2021 (ImageNet-1k only), as quoted in DeiT Table 5",
         86.0, None, "GMACs", 384, 77.9, PAPER_BASELINE, "printed as 86M params; no FLOPs given"),
    _ref("DeiT-B", PAPER, "Touvron et al. 2021 (DeiT), Table 1", 86.0, None, "GMACs", 224, 81.8,
         PAPER_BASELINE, "printed as 86M params; DeiT gives throughput, not FLOPs"),
    _ref("EfficientFormer-L1", PAPER, "Li et al. 2022 (EfficientFormer, NeurIPS), Table 1", 12.3, 1.3,
         "GMACs", 224, 79.2, PAPER_BASELINE, "the study cites Wang et al. [16] for these rows"),
    _ref("EfficientFormer-L3", PAPER, "Li et al. 2022 (EfficientFormer, NeurIPS), Table 1", 31.3, 3.9,
         "GMACs", 224, 82.4, PAPER_BASELINE),
    _ref("EfficientFormer-L7", PAPER, "Li et al. 2022 (EfficientFormer, NeurIPS), Table 1", 82.1, 10.2,
         "GMACs", 224, 83.3, PAPER_BASELINE),
    _ref("DynamicViT-B/0.7", PAPER, "Rao et al. 2021 (DynamicViT, NeurIPS)", None, 11.2, "GMACs", 224, 81.3,
         PAPER_BASELINE, "fvcore 'FLOPs' = GMACs; the official model zoo lists 11.4 G / 81.43 % (= our "
         "count of the released code, 11.49 G, truncated); 11.2 lies between our counts without "
         "(11.08) and with (11.49) the predictors"),
)
# fmt: on

TABLE1_COLUMNS = ("model", "source", "method", "dataset", "img_size", "params_M", "gmacs", "gflops",
                  "top1", "top5", "d_params_M", "d_gmacs", "d_gflops", "d_top1", "printed_G",
                  "printed_unit", "reference", "note", "run", "command")


def _run_command(profile: str, notebook: str, variant: str | None, manifest: dict | None) -> str:
    """The command that (re)makes one run; a sweep point is pinned with -p key=value."""
    cmd = f"python -m vitprune run --profile {profile} --only {notebook}"
    if variant and manifest:
        params = manifest.get("params", {})
        pins = [f"{k}={params[k]}" for k in sorted(params)
                if k not in config.INJECTED and f"{k}_{params[k]}" in variant.split("__")]
        cmd += "".join(f" -p {pin}" for pin in pins)
    return cmd


def collect_runs(runs_root: str | os.PathLike | None, profile: str) -> list[dict[str, Any]]:
    """Every model run (notebooks 01-04) of a profile that wrote metrics.json.

    Returns one dict per run: {"run" ("02_token_pruning/base_rate_0.7"), "notebook",
    "variant", "profile", "run_dir", "command", "metrics"}. Runs whose manifest says they
    failed are left out. A metrics.json may hold extra table rows under `rows` (a list of
    metrics-like dicts, e.g. notebook 04's combinations and training-free rows); each becomes
    a run of its own named "<run>#<i>", inheriting the parent's keys it does not set. The
    parent's own summary is left out when a row has its method (it repeats that row).
    Missing notebooks are simply absent.
    """
    root = config.runs_root_or_default(runs_root) / profile
    runs: list[dict[str, Any]] = []
    for notebook in MODEL_NOTEBOOKS:
        base = root / notebook
        candidates = [base] + sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []
        for run_dir in candidates:
            path = run_dir / METRICS_FILE
            if not path.is_file():
                continue
            manifest = _read_json(run_dir / "manifest.json")
            if manifest and manifest.get("status") == "failed":
                continue
            try:
                metrics = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} is not valid JSON ({exc}); re-run the notebook "
                                f"(python -m vitprune run --profile {profile} --only {notebook} --force)") from exc
            variant = None if run_dir == base else run_dir.name
            name = f"{notebook}/{variant}" if variant else notebook
            entry = {"run": name, "notebook": notebook, "variant": variant, "profile": profile,
                     "run_dir": str(run_dir), "command": _run_command(profile, notebook, variant, manifest)}
            extra = metrics.pop("rows", None) or []
            # A run's own summary that repeats one of its rows (same method) is not added twice.
            if not any(row.get("method") == metrics.get("method") for row in extra):
                runs.append({**entry, "metrics": metrics})
            inherit = {k: v for k, v in metrics.items() if k in ("model_name", "img_size", "eval_samples", "dataset")}
            for i, row in enumerate(extra):
                runs.append({**entry, "run": f"{name}#{i}", "metrics": {**inherit, **row}})
    return runs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _num(value: Any, scale: float = 1.0) -> float:
    """A metrics number divided by `scale`; NaN when absent (a missing cell, not zero)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value) / scale
    except (TypeError, ValueError):
        return math.nan


def _measured_row(run: dict[str, Any]) -> dict[str, Any]:
    m = run["metrics"]
    macs = _num(m.get("macs"))
    flops = _num(m.get("flops")) if m.get("flops") is not None else 2 * macs
    return {
        "model": m.get("label") or run["run"], "source": MEASURED, "method": m.get("method", ""),
        "dataset": m.get("dataset") or DATASET_NAMES.get(run.get("profile", ""), run.get("profile", "")),
        "img_size": m.get("img_size"), "params_M": _num(m.get("params"), 1e6),
        "gmacs": macs / 1e9, "gflops": flops / 1e9, "top1": _num(m.get("top1")), "top5": _num(m.get("top5")),
        "printed_G": math.nan, "printed_unit": "", "reference": f"this repo, {run.get('profile', '')} profile",
        "note": "counted by vitprune.measure (eval, batch 1, fused attention counted); GFLOPs = 2 x GMACs",
        "run": run["run"], "command": run.get("command", ""), "_base_rate": _num(m.get("base_rate")),
    }


def _reference_row(ref: dict[str, Any]) -> dict[str, Any]:
    printed = ref["printed_G"]
    if printed is None:
        gmacs = math.nan
    elif ref["printed_unit"] == "GMACs":
        gmacs = float(printed)
    elif ref["printed_unit"] == "GFLOPs":
        gmacs = float(printed) / 2
    else:  # pragma: no cover - guards the typed-in data above
        raise ValueError(f"unknown unit {ref['printed_unit']!r}")
    return {
        "model": ref["model"], "source": ref["source"], "method": "reference", "dataset": ref["dataset"],
        "img_size": ref["img_size"], "params_M": _num(ref["params_M"]), "gmacs": gmacs, "gflops": 2 * gmacs,
        "top1": _num(ref["top1"]), "top5": math.nan, "printed_G": _num(printed),
        "printed_unit": ref["printed_unit"], "reference": ref["reference"], "note": ref["note"],
        "run": "", "command": "", "_baseline": ref["baseline"],
    }


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def table1(runs: list[dict[str, Any]], include_reference: bool = True):
    """Table 1 as a pandas DataFrame: our measured rows, then the study's and the papers' rows.

    Columns (see TABLE1_COLUMNS): params_M, gmacs, gflops (= 2 x gmacs), top1/top5 (%), and
    d_* = the row minus its baseline in the same unit (measured rows: our `baseline` run;
    study rows: the study's DeiT-B row; paper rows: DeiT-B as published). `printed_G` and
    `printed_unit` record a reported row's number as printed and what unit it really is.
    Measured rows are ordered baseline, DynamicViT (rate high to low), training-free, block,
    token->block, block->token.
    """
    import pandas as pd

    measured = sorted((_measured_row(r) for r in runs),
                      key=lambda row: (_method_rank(row["method"]),
                                       -row["_base_rate"] if not math.isnan(row["_base_rate"]) else 0.0,
                                       row["run"]))
    baselines = [row for row in measured if row["method"] == "baseline"]
    for row in measured:
        _set_deltas(row, baselines[0] if baselines else None)
    rows = list(measured)
    if include_reference:
        refs = [_reference_row(ref) for ref in REFERENCE_ROWS]
        by_name = {row["model"]: row for row in refs}
        for row in refs:
            _set_deltas(row, by_name.get(row["_baseline"]))
        rows += refs
    df = pd.DataFrame(rows, columns=list(TABLE1_COLUMNS))
    return df.reset_index(drop=True)


def _set_deltas(row: dict[str, Any], base: dict[str, Any] | None) -> None:
    for key in ("params_M", "gmacs", "gflops", "top1"):
        row[f"d_{key}"] = row[key] - base[key] if base is not None else math.nan


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, digits: int = 4) -> str:
    """Numbers to 4 significant digits (tiny Fashion-MNIST models and DeiT-B in one column)."""
    if _missing(value):
        return ""
    if isinstance(value, float) and value == int(value) and abs(value) >= 10 ** (digits - 1):
        return f"{int(value)}"
    return f"{value:.{digits}g}"


def _places(value: float, digits: int = 4) -> int:
    """Decimals that show `value` to `digits` significant digits (0.02519, 0.4294, 17.58)."""
    if value == 0:
        return digits - 1
    return max(0, digits - 1 - math.floor(math.log10(abs(value))))


def _pair(value: Any, delta: Any, show_delta: bool, places: int) -> str:
    """"value (change)", both with `places` decimals."""
    if _missing(value):
        return ""
    text = f"{value:.{places}f}"
    if show_delta and not _missing(delta):
        text += f" ({delta:+.{places}f})"
    return text


def display_table1(df):
    """Strings for Markdown/LaTeX: "value (change)" per metric, units in the headers.
    Measured rows: 4 significant digits (top-1: 2 decimals); reported rows: 1 decimal, as
    the study and the papers print them."""
    import pandas as pd

    show = [not (row["method"] == "baseline" or row["model"] in (STUDY_BASELINE, PAPER_BASELINE))
            for _, row in df.iterrows()]
    measured = list(df["source"] == MEASURED)

    def column(key, pct=False):
        out = []
        for v, d, s, m in zip(df[key], df[f"d_{key}"], show, measured):
            places = 1 if not m else 2 if pct else (_places(v) if not _missing(v) else 0)
            out.append(_pair(v, d, s, places))
        return out

    out = pd.DataFrame({
        "Model": df["model"],
        "Source": df["source"],
        "Data": df["dataset"],
        "Res.": [f"{int(s)}" if isinstance(s, (int, float)) and not math.isnan(s) else str(s or "")
                 for s in df["img_size"]],
        "Params (M)": column("params_M"),
        "GMACs": column("gmacs"),
        "GFLOPs": column("gflops"),
        "Top-1 (%)": column("top1", pct=True),
        "As printed": [f"{_fmt(p)} = {u}" if u and not math.isnan(p) else ("counted" if s == MEASURED else "")
                       for p, u, s in zip(df["printed_G"], df["printed_unit"], df["source"])],
    })
    return out


TABLE1_NOTES = (
    "GMACs: multiply-accumulates per image / 1e9; GFLOPs = 2 x GMACs. Changes in brackets are "
    "against the row's own baseline in the same unit (ours: our baseline run; study rows: the "
    "study's DeiT-B; paper rows: DeiT-B as published).",
    "'As printed' gives the number in the study's or paper's FLOPs column and the unit it really "
    "is: DeiT/DynamicViT numbers are fvcore counts (= GMACs); the study doubled EfficientFormer's "
    "GMACs. Measured rows are counted by vitprune.measure.",
)


def write_table1(df, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write table1.md, table1.csv (every column, full precision) and table1.tex; atomic each."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = display_table1(df)
    markdown = shown.to_markdown(index=False) + "\n\n" + "\n".join(f"- {n}" for n in TABLE1_NOTES) + "\n"
    latex = shown.to_latex(index=False, escape=True, column_format="l" * len(shown.columns),
                           caption="Table 1 (regenerated). " + " ".join(TABLE1_NOTES), label="tab:table1")
    paths = {}
    for name, text in (("table1.md", markdown), ("table1.csv", df.to_csv(index=False)), ("table1.tex", latex)):
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths[name] = path
    return paths



# ================================================================ equal-MAC comparison

SWEPT_METHODS = ("dynamicvit", "block")  # methods the profile sweeps over a compute knob


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


def equal_mac_comparison(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pruned row (not the baseline) against the swept single methods at its own MACs.

    For each row: its top-1 and MACs, and for DynamicViT and block pruning the top-1 their
    sweep reaches at the same MACs (`interpolate_top1`; None outside the sweep). `margin` is
    the row's top-1 minus the best interpolated single method (None when neither covers the
    row's MACs); a combination with margin > 0 beats both methods at equal compute."""
    rows = [r["metrics"] for r in runs if _is_row(r["metrics"])]
    sweeps = {m: [(float(r["macs"]), float(r["top1"])) for r in rows if r.get("method") == m]
              for m in SWEPT_METHODS}
    out = []
    for r in rows:
        if r.get("method") == "baseline":
            continue
        macs, top1 = float(r["macs"]), float(r["top1"])
        at = {m: interpolate_top1(sweeps[m], macs) if len(sweeps[m]) >= 2 else None for m in SWEPT_METHODS}
        others = [v for m, v in at.items() if v is not None and m != r.get("method")]
        out.append({"label": r.get("label", ""), "method": r.get("method", ""), "macs": macs, "top1": top1,
                    **{f"{m}_top1_at_macs": v for m, v in at.items()},
                    "margin": top1 - max(others) if others else None})
    return sorted(out, key=lambda row: (_method_rank(row["method"]), row["macs"]))


def _is_row(m: dict[str, Any]) -> bool:
    return isinstance(m.get("macs"), (int, float)) and isinstance(m.get("top1"), (int, float))


def equal_mac_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table plus one sentence per combination row."""
    def pct(v):
        return "—" if v is None else f"{v:.2f}"

    lines = ["| row | method | MACs (M) | top-1 % | DynamicViT at these MACs | block pruning at these MACs "
             "| margin over the best other method |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        margin = "—" if r["margin"] is None else f"{r['margin']:+.2f}"
        lines.append(f"| {r['label']} | {r['method']} | {r['macs'] / 1e6:.2f} | {r['top1']:.2f} | "
                     f"{pct(r['dynamicvit_top1_at_macs'])} | {pct(r['block_top1_at_macs'])} | {margin} |")
    lines.append("")
    lines.append("Interpolated linearly in MACs between the two neighbouring runs of each sweep; "
                 "— = outside that sweep's MAC range (not extrapolated).")
    combos = [r for r in rows if r["method"] in ("token_then_block", "block_then_token")]
    for r in combos:
        if r["margin"] is None:
            lines.append(f"- {r['label']}: no single-method sweep reaches {r['macs'] / 1e6:.2f} M MACs, "
                         "so no equal-MAC comparison.")
        else:
            verdict = "above" if r["margin"] > 0 else "below"
            lines.append(f"- {r['label']} ({r['top1']:.2f} % at {r['macs'] / 1e6:.2f} M MACs) is "
                         f"{abs(r['margin']):.2f} points {verdict} the best single method at the same MACs.")
    if combos:
        wins = [r for r in combos if r["margin"] is not None and r["margin"] > 0]
        lines.append(f"- The combination Pareto-dominates here: {'yes' if wins and len(wins) == len(combos) else 'no'} "
                     f"({len(wins)} of {len(combos)} orders beat both methods at equal MACs).")
    return "\n".join(lines) + "\n"


def write_equal_macs(rows: list[dict[str, Any]], out_dir: str | os.PathLike) -> Path:
    """equal_macs.md in `out_dir` (atomic)."""
    path = Path(out_dir) / "equal_macs.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Equal-MAC comparison\n\n" + equal_mac_markdown(rows))
    os.replace(tmp, path)
    return path


def require_runs(runs: list[dict[str, Any]], runs_root: str | os.PathLike | None, profile: str) -> None:
    if not runs:
        where = config.runs_root_or_default(runs_root) / profile
        raise UserError(f"no model runs with metrics.json under {where} (notebooks "
                        f"{', '.join(MODEL_NOTEBOOKS)}); run `python -m vitprune run --profile {profile}` first")
