"""Table 1: our measured rows (folded over seeds) beside the study's Table 1 as printed and the
rows of the papers it quotes, as a DataFrame (`table1`), for display (`display_table1`) and as
Markdown, CSV and LaTeX (`write_table1`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vitprune.study.results import fold_seeds, method_rank

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
# (its caption: "calculated in GMACs and converted to GFLOPs"). vitprune.study.audit checks both
# claims against our own counts of the same architectures.

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

TABLE1_COLUMNS = ("model", "source", "method", "control", "dataset", "img_size", "params_M", "gmacs", "gflops",
                  "top1", "top1_std", "n_seeds", "top5", "d_params_M", "d_gmacs", "d_gflops", "d_top1",
                  "d_top1_low", "d_top1_high", "d_top1_control", "d_top1_control_low", "d_top1_control_high",
                  "study_d_top1",
                  "train_steps", "train_images", "train_wall_s", "train_stages", "printed_G",
                  "printed_unit", "reference", "note", "run", "command")


def _num(value: Any, scale: float = 1.0) -> float:
    """A metrics number divided by `scale`; NaN when absent (a missing cell, not zero)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value) / scale
    except (TypeError, ValueError):
        return math.nan


def _measured_row(run: dict[str, Any]) -> dict[str, Any]:
    """One Table 1 row of a folded configuration (`fold_seeds`): top-1 is the mean over its
    seeds, `top1_std` their sample std (NaN for one run), `n_seeds` how many (0: not trained,
    the same at every seed); `train_*` its training budget, every stage since the baseline summed
    (the baseline's own training for the baseline)."""
    m = run["metrics"]
    budget = m.get("budget") or {}
    macs = _num(m.get("macs"))
    flops = _num(m.get("flops")) if m.get("flops") is not None else 2 * macs
    return {
        "model": m.get("label") or run["run"], "source": MEASURED, "method": m.get("method", ""),
        "control": bool(m.get("control")),
        "dataset": m.get("dataset") or DATASET_NAMES.get(run.get("profile", ""), run.get("profile", "")),
        "img_size": m.get("img_size"), "params_M": _num(m.get("params"), 1e6),
        "gmacs": macs / 1e9, "gflops": flops / 1e9, "top1": _num(m.get("top1")), "top5": _num(m.get("top5")),
        "top1_std": _num(m.get("top1_std")), "n_seeds": int(m.get("n_seeds", 1)) if m.get("trained", True) else 0,
        "train_steps": _num(budget.get("steps")), "train_images": _num(budget.get("images")),
        "train_wall_s": _num(budget.get("wall_s")), "train_stages": _num(budget.get("stages")),
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


def table1(runs: list[dict[str, Any]], include_reference: bool = True, drops: list[dict[str, Any]] | None = None):
    """Table 1 as a pandas DataFrame: our measured rows, then the study's and the papers' rows.

    Columns (see TABLE1_COLUMNS): params_M, gmacs, gflops (= 2 x gmacs), top1/top5 (%), and
    d_* = the row minus its baseline in the same unit (measured rows: our `baseline` run;
    study rows: the study's DeiT-B row; paper rows: DeiT-B as published). `printed_G` and
    `printed_unit` record a reported row's number as printed and what unit it really is.
    Measured rows are ordered baseline, DynamicViT (rate high to low), training-free, block,
    token->block, block->token. `runs` are `collect_runs`'s; the seeds of one configuration are
    folded into one row (`fold_seeds`: mean, std, n). `drops` (`comparisons.baseline_drops`) add
    the seeded drops with their 95 % intervals: against the baseline (d_top1_low/high), against
    the row's control (d_top1_control*) and the study's drop at the same rate (study_d_top1).
    Controls follow their method's baseline-like position: before its pruned rows.
    """
    import pandas as pd

    measured = sorted((_measured_row(r) for r in fold_seeds(runs)),
                      key=lambda row: (method_rank(row["method"]), not row["control"],
                                       -row["_base_rate"] if not math.isnan(row["_base_rate"]) else 0.0,
                                       row["run"]))
    by_run = {d["run"]: d for d in drops or []}
    for row in measured:
        drop = by_run.get(row["run"])
        if drop:
            control = drop.get("control") or {}
            row.update(d_top1_low=_num(drop.get("low")), d_top1_high=_num(drop.get("high")),
                       d_top1_control=_num(control.get("mean")), d_top1_control_low=_num(control.get("low")),
                       d_top1_control_high=_num(control.get("high")), study_d_top1=_num(drop.get("study_drop")))
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

    def top1_column():
        out = []
        for text, std, m in zip(column("top1", pct=True), df["top1_std"], measured):
            if m and not _missing(std) and text:
                value, _, delta = text.partition(" ")
                text = f"{value} ± {std:.2f}" + (f" {delta}" if delta else "")
            out.append(text)
        return out

    def seeds_column():
        return [("" if not m else "no training" if n == 0 else f"{int(n)}")
                for n, m in zip(df["n_seeds"], measured)]

    def budget_column():
        out = []
        for steps, images, wall, stages, m in zip(df["train_steps"], df["train_images"], df["train_wall_s"],
                                                   df["train_stages"], measured):
            if not m or _missing(steps):
                out.append("")
                continue
            text = f"{int(steps)} steps, {int(images):,} img"
            text += f", {wall:.0f} s" if not _missing(wall) else ""
            out.append(text + (f" ({int(stages)} stages)" if not _missing(stages) and stages > 1 else ""))
        return out

    def interval_column(key):
        """"mean [95 % interval]" of a measured row's seeded drop (`key`: d_top1 against the baseline,
        d_top1_control against its control)."""
        out = []
        for _, row in df.iterrows():
            mean, low, high = row[key], row[f"{key}_low"], row[f"{key}_high"]
            if row["source"] != MEASURED or row["method"] == "baseline" or _missing(mean):
                is_control = not _missing(row["control"]) and bool(row["control"])  # NaN on reported rows
                out.append("(the control)" if key == "d_top1_control" and is_control else "")
            elif row["n_seeds"] == 0:
                out.append(f"{mean:+.2f} (no training)")
            elif _missing(low):
                out.append(f"{mean:+.2f} (one seed)")
            else:
                out.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
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
        "Top-1 (%)": top1_column(),
        "Seeds": seeds_column(),
        "Δ baseline [95 %]": interval_column("d_top1"),
        "Δ control [95 %]": interval_column("d_top1_control"),
        "Study's Δ": ["" if _missing(v) else f"{v:+.1f}" for v in df["study_d_top1"]],
        "Training (steps, images, wall)": budget_column(),
        "As printed": [f"{_fmt(p)} = {u}" if u and not math.isnan(p) else ("counted" if s == MEASURED else "")
                       for p, u, s in zip(df["printed_G"], df["printed_unit"], df["source"])],
    })
    return out


TABLE1_NOTES = (
    "GMACs: multiply-accumulates per image / 1e9; GFLOPs = 2 x GMACs. Changes in brackets are "
    "against the row's own baseline in the same unit (ours: our baseline run; study rows: the "
    "study's DeiT-B; paper rows: DeiT-B as published).",
    "Measured top-1: mean ± sample standard deviation over the fine-tune seeds (Seeds: how many; "
    "one baseline, trained once, is the start of every seed; 'no training' rows are the same at "
    "every seed). Training: optimizer steps, images seen (steps x global batch) and wall time of "
    "every fine-tuning stage since the baseline (the baseline's row: its own training).",
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
