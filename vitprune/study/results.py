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
from typing import Any, Sequence

from vitprune.errors import UserError
from vitprune.study import config, stats

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
# (its caption: "calculated in GMACs and converted to GFLOPs"). vitprune.study.audit checks both
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
                  "top1", "top1_std", "n_seeds", "top5", "d_params_M", "d_gmacs", "d_gflops", "d_top1",
                  "train_steps", "train_images", "train_wall_s", "train_stages", "printed_G",
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


def collect_runs(runs_root: str | os.PathLike | None, profile: str,
                 seeds: Sequence[int] | None = None, left_out: list[str] | None = None) -> list[dict[str, Any]]:
    """Every model run (notebooks 01-04) of a profile that wrote metrics.json; with `seeds`,
    only those fine-tune seeds of the SEEDED notebooks (02-04) (other seeds on disk are left out).

    Returns one dict per run: {"run" ("02_token_pruning/base_rate_0.7"), "notebook",
    "variant", "profile", "run_dir", "command", "metrics"}. Only runs the pipeline finished
    (manifest status ok) count; the others (a manifest that says failed, metrics written outside
    the pipeline without one) are left out and, with `left_out`, named there with the reason.
    A run's `.partial` folder (`config.PARTIAL_SUFFIX`) is never a run. A metrics.json may hold
    extra table rows under `rows` (a list of metrics-like dicts, e.g. notebook 04's combinations
    and training-free rows); each becomes
    a run of its own named "<run>#<i>", inheriting the parent's keys it does not set. The
    parent's own summary is left out when a row has its method (it repeats that row).
    Missing notebooks are simply absent.
    """
    root = config.runs_root_or_default(runs_root) / profile
    runs: list[dict[str, Any]] = []
    for notebook in MODEL_NOTEBOOKS:
        base = root / notebook
        candidates = [base] + sorted(p for p in base.glob("*") if p.is_dir()
                                     and not p.name.endswith(config.NOT_RUN_FOLDERS)) if base.is_dir() else []
        for run_dir in candidates:
            path = run_dir / METRICS_FILE
            if not path.is_file():
                continue
            manifest = _read_json(run_dir / "manifest.json")
            if not manifest or manifest.get("status") != "ok":
                if left_out is not None:
                    left_out.append(f"{run_dir}: " + ("metrics.json without a manifest (written outside the pipeline, "
                                                      "e.g. papermill or a notebook by hand)" if not manifest
                                                      else f"manifest says {manifest.get('status')}"))
                continue
            try:
                metrics = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} is not valid JSON ({exc}); re-run the notebook "
                                f"(python -m vitprune run --profile {profile} --only {notebook} --force)") from exc
            variant = None if run_dir == base else run_dir.name
            seed = metrics.get("seed")
            if seeds is not None and notebook in config.SEEDED and isinstance(seed, int) and seed not in seeds:
                continue
            name = f"{notebook}/{variant}" if variant else notebook
            entry = {"run": name, "notebook": notebook, "variant": variant, "profile": profile,
                     "run_dir": str(run_dir), "command": _run_command(profile, notebook, variant, manifest)}
            extra = metrics.pop("rows", None) or []
            # A run's own summary that repeats one of its rows (same method) is not added twice.
            if not any(row.get("method") == metrics.get("method") for row in extra):
                runs.append({**entry, "metrics": metrics})
            inherit = {k: v for k, v in metrics.items() if k in ("model_name", "img_size", "eval_samples", "dataset", "seed")}
            for i, row in enumerate(extra):
                runs.append({**entry, "run": f"{name}#{i}", "metrics": {**inherit, **row}})
    return runs


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ================================================================ seeds

UNTRAINED_METHODS = ("training_free", "merging")  # evaluated as they are: the same at every seed


def seed_of(run: dict[str, Any]) -> int | None:
    """The fine-tune seed of a SEEDED notebook's run (None for the baseline and the data)."""
    seed = run["metrics"].get("seed")
    return int(seed) if run.get("notebook") in config.SEEDED and isinstance(seed, int) else None


def point_of(run: dict[str, Any]) -> str:
    """The run's name without its seed: the runs of one configuration at several seeds share
    it ("02_token_pruning/base_rate_0.7__seed_1" -> "02_token_pruning/base_rate_0.7"; a row
    index "#i" of notebook 04 stays)."""
    name, _, row = run["run"].partition("#")
    parts = name.split("/")
    kept = [p for p in parts[-1].split("__") if not p.startswith("seed_")] if len(parts) > 1 else []
    base = "/".join(parts[:-1] + ["__".join(kept)] if kept else parts[:1])
    return base + (f"#{row}" if row else "")


def fine_tune_budget(history: list[dict[str, Any]] | None, wall_s: float | None) -> dict[str, Any] | None:
    """A fine-tune's budget from engine.train's history: optimizer steps, images seen (steps x
    global batch) and wall time in seconds; None for a model that was not trained. A run with a
    hand-off snapshot (engine.train's `snapshot`) also gets `handoff`: the steps and images spent
    up to it (what a combination that continues from there has used of this budget)."""
    if not history:
        return None
    steps = sum(int(h["steps_per_epoch"]) for h in history)
    batch = int(history[0].get("global_batch", 0))
    out = {"steps": steps, "images": steps * batch, "wall_s": float(wall_s) if wall_s is not None else None}
    k = history[0].get("snapshot_step")
    if k:
        out["handoff"] = {"steps": int(k), "images": int(k) * batch}
    return out


def _budget_total(m: dict[str, Any]) -> dict[str, Any] | None:
    """Every fine-tuning stage a row's model went through since the baseline, summed."""
    stages = [b for b in (m.get("stage_budgets") or [m.get("budget")]) if b]
    if not stages:
        return None
    wall = [b.get("wall_s") for b in stages]
    return {"steps": sum(int(b["steps"]) for b in stages), "images": sum(int(b["images"]) for b in stages),
            "wall_s": sum(wall) if all(w is not None for w in wall) else None, "stages": len(stages)}


def fold_seeds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration: its seeds' runs folded into one run-like dict whose metrics
    are the first seed's with `top1`, `top5`, `speedup` replaced by their means over the seeds,
    and `top1_std` (None for one run or an untrained row), `n_seeds`, `seeds`, `top1_by_seed`,
    `trained` (False for the training-free rows, identical at every seed) and `budget` (every
    stage summed) added.
    `seed_runs` holds the runs themselves (paired comparisons need them)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(point_of(run), []).append(run)
    out = []
    for point, members in groups.items():
        members = sorted(members, key=lambda r: (seed_of(r) is None, seed_of(r) or 0))
        first = members[0]["metrics"]
        trained = first.get("method") not in UNTRAINED_METHODS
        folded = dict(first)
        for key in ("top1", "top5", "speedup"):
            values = [r["metrics"][key] for r in members if isinstance(r["metrics"].get(key), (int, float))]
            if values:
                summ = stats.summary(values)
                folded[key] = summ["mean"]
                # a training-free row is the same at every seed: no spread to report
                folded[f"{key}_std"] = summ["std"] if trained else None
        folded.update(n_seeds=len(members), seeds=[seed_of(r) for r in members], trained=trained,
                      top1_by_seed={str(seed_of(r)): r["metrics"].get("top1") for r in members},
                      budget=_budget_total(first))
        budgets = [_budget_total(r["metrics"]) for r in members]
        walls = [b["wall_s"] for b in budgets if b and b.get("wall_s") is not None]
        if folded["budget"] and walls:
            folded["budget"] = {**folded["budget"], "wall_s": stats.summary(walls)["mean"]}
        variant = members[0].get("variant")
        kept = "__".join(p for p in (variant or "").split("__") if p and not p.startswith("seed_")) or None
        head, *pins = members[0].get("command", "").split(" -p ")  # a configuration's command pins no seed
        command = " -p ".join([head] + [pin for pin in pins if not pin.startswith("seed=")])
        if len(members) > 1:
            command += f" --seeds {len(members)}"
        out.append({**members[0], "run": point, "variant": kept, "command": command, "metrics": folded,
                    "seed_runs": members})
    return out


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


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def table1(runs: list[dict[str, Any]], include_reference: bool = True):
    """Table 1 as a pandas DataFrame: our measured rows, then the study's and the papers' rows.

    Columns (see TABLE1_COLUMNS): params_M, gmacs, gflops (= 2 x gmacs), top1/top5 (%), and
    d_* = the row minus its baseline in the same unit (measured rows: our `baseline` run;
    study rows: the study's DeiT-B row; paper rows: DeiT-B as published). `printed_G` and
    `printed_unit` record a reported row's number as printed and what unit it really is.
    Measured rows are ordered baseline, DynamicViT (rate high to low), training-free, block,
    token->block, block->token. `runs` are `collect_runs`'s; the seeds of one configuration are
    folded into one row (`fold_seeds`: mean, std, n).
    """
    import pandas as pd

    measured = sorted((_measured_row(r) for r in fold_seeds(runs)),
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


def _seed_sweeps(runs: list[dict[str, Any]]) -> dict[Any, dict[str, list[tuple[float, float]]]]:
    """{seed: {swept method: [(MACs, top-1), ...]}}: each seed's sweep of each single method."""
    out: dict[Any, dict[str, list[tuple[float, float]]]] = {}
    for r in runs:
        m = r["metrics"]
        if m.get("method") in SWEPT_METHODS and _is_row(m):
            out.setdefault(seed_of(r), {}).setdefault(m["method"], []).append((float(m["macs"]), float(m["top1"])))
    return out


def equal_mac_comparison(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pruned configuration (not the baseline) against the swept single methods at its own
    MACs, seed by seed.

    For each configuration and each swept method other than its own, at every seed both have:
    the top-1 that method's sweep of the same seed reaches at the configuration's MACs
    (`interpolate_top1`, None outside the sweep), and the paired difference (configuration minus
    method). The differences give `vs[method]`: {at_macs (mean), n, mean, std, low, high (95 %
    t interval, `stats.paired_interval`), verdict}. `margin` is the same against the best method
    at each seed. Keys `<method>_top1_at_macs` and `margin` (means) keep the one-seed reading."""
    sweeps = _seed_sweeps(runs)
    out = []
    for point in fold_seeds([r for r in runs if _is_row(r["metrics"])]):
        m = point["metrics"]
        if m.get("method") == "baseline":
            continue
        entry = {"label": m.get("label", ""), "method": m.get("method", ""), "run": point["run"],
                 "macs": float(m["macs"]), "top1": float(m["top1"]), "top1_std": m.get("top1_std"),
                 "n_seeds": m.get("n_seeds", 1), "trained": m.get("trained", True), "vs": {}}
        best: list[float] = []
        for method in SWEPT_METHODS:
            diffs, ats = [], []
            for r in point["seed_runs"]:
                pts = sweeps.get(seed_of(r), {}).get(method, [])
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
        for r in point["seed_runs"]:  # against the best single method at each seed
            covered = [interpolate_top1(pts, float(r["metrics"]["macs"]))
                       for method, pts in sweeps.get(seed_of(r), {}).items()
                       if method != m.get("method") and len(pts) >= 2]
            covered = [c for c in covered if c is not None]
            if covered:
                best.append(float(r["metrics"]["top1"]) - max(covered))
        entry["margin_interval"] = stats.paired_interval(best) if best else None
        entry["margin"] = entry["margin_interval"]["mean"] if best else None
        out.append(entry)
    return sorted(out, key=lambda row: (_method_rank(row["method"]), row["macs"]))


def study_drop(base_rate: float = 0.7) -> float | None:
    """The study's own small-scale DynamicViT drop: DyViT-Sub/<rate> minus its DeiT-B row (points)."""
    rows = {r["model"]: r for r in REFERENCE_ROWS if r["source"] == STUDY}
    sub, base = rows.get(f"DyViT-Sub/{base_rate:g}"), rows.get(STUDY_BASELINE)
    return None if sub is None or base is None else sub["top1"] - base["top1"]


def baseline_drops(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every trained pruned configuration's top-1 minus the baseline's, seed by seed, with the 95 %
    t interval of the mean drop; DynamicViT rows at a rate the study ran also carry the study's
    drop and whether our interval holds it. The baseline is one run (the start of every seed), so
    the interval is the fine-tunes' spread only."""
    base = [r["metrics"] for r in runs if r["metrics"].get("method") == "baseline" and _is_row(r["metrics"])]
    if not base:
        return []
    base_top1 = float(base[0]["top1"])
    out = []
    for point in fold_seeds([r for r in runs if _is_row(r["metrics"])]):
        m = point["metrics"]
        if m.get("method") == "baseline" or not m.get("trained", True):
            continue
        interval = stats.paired_interval([float(r["metrics"]["top1"]) - base_top1 for r in point["seed_runs"]])
        row = {"label": m.get("label", ""), "method": m.get("method"), "run": point["run"], "macs": float(m["macs"]),
               "baseline_top1": base_top1, **interval}
        rate = m.get("base_rate")
        if m.get("method") == "dynamicvit" and (m.get("schedule") or "geometric") == "geometric" and rate is not None:
            reported = study_drop(float(rate))
            if reported is not None:
                row.update(study_drop=reported, holds_study_drop=stats.contains(interval, reported))
        out.append(row)
    return sorted(out, key=lambda row: (_method_rank(row["method"]), row["macs"]))


def _is_row(m: dict[str, Any]) -> bool:
    return isinstance(m.get("macs"), (int, float)) and isinstance(m.get("top1"), (int, float))


VERDICT_WORDS = {"better": "above", "worse": "below"}


def equal_mac_markdown(rows: list[dict[str, Any]], drops: list[dict[str, Any]] | None = None) -> str:
    """The comparisons as Markdown: drops against the baseline (with the study's), then every row
    against both sweeps at equal MACs, each a paired difference with its 95 % interval and a
    verdict that says 'not distinguishable' when the interval holds 0."""
    def pct(v):
        return "—" if v is None else f"{v:.2f}"

    def versus(r, method):
        v = r["vs"].get(method)
        if v is None:
            return pct(r.get(f"{method}_top1_at_macs"))
        verdict = "" if v["low"] is None else f" {v['verdict']}"
        return f"{v['at_macs']:.2f}; {stats.format_interval(v)}{verdict}"

    lines = []
    if drops:
        lines += ["## Against the baseline", "",
                  "| row | MACs (M) | top-1 − baseline, mean [95 % interval] | seeds | the study's drop |",
                  "|---|---:|---:|---:|---|"]
        for d in drops:
            study = "—"
            if "study_drop" in d:
                held = d["holds_study_drop"]
                study = f"{d['study_drop']:+.2f}: " + ("one seed, no interval" if held is None else
                                                       "inside our interval" if held else "outside our interval")
            lines.append(f"| {d['label']} | {d['macs'] / 1e6:.2f} | {stats.format_interval(d)} | {d['n']} | {study} |")
        lines += ["", "Baseline: one run (top-1 {:.2f} %); the interval is Student's t over the fine-tune seeds."
                  .format(drops[0]["baseline_top1"]), ""]
    lines += ["## At equal MACs", "",
              "| row | method | MACs (M) | top-1 % | seeds | DynamicViT at these MACs; row − it | "
              "block pruning at these MACs; row − it |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        spread = f"{r['top1']:.2f}" + (f" ± {r['top1_std']:.2f}" if r.get("top1_std") is not None else "")
        seeds = str(r["n_seeds"]) if r.get("trained", True) else "no training"
        lines.append(f"| {r['label']} | {r['method']} | {r['macs'] / 1e6:.2f} | {spread} | {seeds} | "
                     f"{versus(r, 'dynamicvit')} | {versus(r, 'block')} |")
    lines.append("")
    lines.append("Each sweep is interpolated linearly in MACs between its two neighbouring runs of the same seed "
                 "(— = outside its MAC range, never extrapolated); a difference is the row's top-1 minus that, seed by "
                 "seed, as mean [95 % Student t interval] over the seeds; better / worse only when the interval "
                 "excludes 0.")
    combos = [r for r in rows if r["method"] in ("token_then_block", "block_then_token")]
    for r in combos:
        if not r["vs"]:
            lines.append(f"- {r['label']}: no single-method sweep reaches {r['macs'] / 1e6:.2f} M MACs, "
                         "so no equal-MAC comparison.")
            continue
        parts = []
        for method, v in r["vs"].items():
            name = "DynamicViT" if method == "dynamicvit" else "block pruning"
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
                     drops: list[dict[str, Any]] | None = None) -> Path:
    """equal_macs.md in `out_dir` (atomic)."""
    path = Path(out_dir) / "equal_macs.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Seeded comparisons: against the baseline and at equal MACs\n\n" + equal_mac_markdown(rows, drops))
    os.replace(tmp, path)
    return path


SUSPECT_SPEEDUP = 1.1  # a measured speedup this far above the MAC ratio is a measurement to explain, not a finding


def suspect_speedups(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose measured speedup exceeds SUSPECT_SPEEDUP x their MAC ratio: fewer MACs cannot
    explain it (in vitprune's history: a bf16 model timed against an fp32 baseline)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return [r for r in runs if number(r["metrics"].get("speedup")) and number(r["metrics"].get("mac_ratio"))
            and r["metrics"]["speedup"] > SUSPECT_SPEEDUP * r["metrics"]["mac_ratio"]]


def require_runs(runs: list[dict[str, Any]], runs_root: str | os.PathLike | None, profile: str) -> None:
    if not runs:
        where = config.runs_root_or_default(runs_root) / profile
        raise UserError(f"no model runs with metrics.json under {where} (notebooks "
                        f"{', '.join(MODEL_NOTEBOOKS)}); run `python -m vitprune run --profile {profile}` first")
