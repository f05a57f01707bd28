"""An audit of the study's numbers, computed by code rather than typed in.

Each finding is a function returning a dict: the numbers it rests on plus a one-paragraph
`text` that states them. The reported numbers come from `table1.REFERENCE_ROWS` (the
study's Table 1 and the source papers, typed in once); the measured ones from
`vitprune.measure.count` on random-init timm models (MACs do not depend on the weights) and
from `vitprune.methods.token_schedule.keep_counts`.

Findings:
  units       which unit each Table 1 "FLOPs (G)" number is (fvcore MACs vs doubled GMACs)
  schedule    which keep-ratio schedule (geometric b, b^2, b^3 or linear b, b-0.2, b-0.4)
              reproduces the study's DyViT-Sub GFLOPs
  layer9      whether block 9 can have kept 0 tokens at base rate 0.4
  resolution  which input size DynamicViT-B/0.7's 11.2 G belongs to (the study lists 384)
  scramble    how many classes keep their label when numeric ImageFolder names sort as strings

DeiT-B counts take seconds each, so `Counter` caches them in a JSON file keyed by the model
spec and the versions of timm/torch/fvcore and of our counting code; a changed counter
invalidates the cache.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from vitprune.study import table1

DEIT_B = "deit_base_patch16_224"
EFFICIENTFORMERS = {"L1": "efficientformer_l1", "L3": "efficientformer_l3", "L7": "efficientformer_l7"}
RATES = (0.7, 0.6, 0.5, 0.4)
SCHEDULES = ("geometric", "linear")
LOCATIONS = (3, 6, 9)


def reported(model: str, source: str = table1.STUDY) -> dict[str, Any]:
    """A reference row of table1.REFERENCE_ROWS by its printed name."""
    for row in table1.REFERENCE_ROWS:
        if row["model"] == model and row["source"] == source:
            return row
    raise KeyError(f"no {source} row named {model!r}")


# ---------------------------------------------------------------- counting with a cache


def token_spec(base_rate: float, schedule: str) -> dict[str, Any]:
    return {"base_rate": base_rate, "schedule": schedule, "locations": list(LOCATIONS), "allow_empty_stage": True}


def spec_of(model: str, img_size: int = 224, token: dict[str, Any] | None = None) -> dict[str, Any]:
    """What to count: a timm model name at an input size, optionally with token pruning attached."""
    return {"model": model, "img_size": int(img_size), "dynamicvit": token}


def _code_version() -> str:
    """Hash of the counting code, so a changed counter never reuses old cached counts."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in ("measure/counts.py", "methods/dynamicvit.py"):
        digest.update((package / name).read_bytes())
    for package in ("timm", "torch", "fvcore"):
        try:
            digest.update(metadata.version(package).encode())
        except metadata.PackageNotFoundError:
            pass
    return digest.hexdigest()[:16]


class Counter:
    """Params and MACs of model specs, counted once and cached in a JSON file.

    `count_fn(spec) -> {"params", "macs"}` defaults to building the timm model (random init)
    and calling `vitprune.measure.count`; tests pass a stand-in.
    """

    def __init__(self, cache_path: str | os.PathLike | None = None,
                 count_fn: Callable[[dict[str, Any]], dict[str, int]] | None = None):
        self.cache_path = Path(cache_path) if cache_path else None
        self.count_fn = count_fn or self._count_real
        self.version = _code_version() if count_fn is None else "custom"
        self._cache: dict[str, dict[str, int]] = {}
        self._models: dict[tuple[str, int], Any] = {}
        self._pruned: dict[tuple[str, int], Any] = {}
        self.counted = 0  # counts actually computed (not from the cache)
        if self.cache_path and self.cache_path.exists():
            try:
                self._cache = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError:
                self._cache = {}  # a damaged cache is recomputed, never trusted

    def _key(self, spec: dict[str, Any]) -> str:
        return json.dumps({"spec": spec, "version": self.version}, sort_keys=True)

    def __call__(self, spec: dict[str, Any]) -> dict[str, int]:
        key = self._key(spec)
        if key not in self._cache:
            value = self.count_fn(spec)
            self._cache[key] = {"params": int(value["params"]), "macs": int(value["macs"])}
            self.counted += 1
            self._save()
        return self._cache[key]

    def gmacs(self, spec: dict[str, Any]) -> float:
        return self(spec)["macs"] / 1e9

    def _save(self) -> None:
        if not self.cache_path:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        tmp.write_text(json.dumps(self._cache, indent=1, sort_keys=True))
        os.replace(tmp, self.cache_path)

    def _base_model(self, name: str, img_size: int):
        """One random-init model per (name, size), reused for every token-pruning variant."""
        import timm
        import torch

        if (name, img_size) not in self._models:
            kwargs = {} if img_size == 224 else {"img_size": img_size}
            with torch.device("cpu"):
                self._models[(name, img_size)] = timm.create_model(name, pretrained=False, **kwargs).eval()
        return self._models[(name, img_size)]

    def _count_real(self, spec: dict[str, Any]) -> dict[str, int]:
        from vitprune import measure  # local, as torch/timm/fvcore: a fully cached audit never imports them

        key = (spec["model"], spec["img_size"])
        model = self._base_model(*key)
        if spec.get("dynamicvit"):
            from vitprune.methods import dynamicvit  # local: imports torch (see above)

            # one pruned copy per (model, size); re-attaching only changes its schedule
            if key not in self._pruned:
                self._pruned[key] = copy.deepcopy(model)
            model = dynamicvit.attach(self._pruned[key], **spec["dynamicvit"])
        return measure.count(model, img_size=spec["img_size"])

    def release(self) -> None:
        """Drop the models built for counting (DeiT-B is 350 MB per copy)."""
        self._models.clear()
        self._pruned.clear()


# ---------------------------------------------------------------- findings


def _nearest_unit(printed: float, gmacs: float) -> tuple[str, float]:
    """Is a printed number MACs (ratio ~1) or FLOPs = 2 x MACs (ratio ~2)?"""
    ratio = printed / gmacs
    return ("GMACs" if abs(ratio - 1) <= abs(ratio - 2) else "GFLOPs"), ratio


def units_finding(counter: Counter) -> dict[str, Any]:
    """Which unit each "FLOPs (G)" number of the study's Table 1 is, from our own counts."""
    deit = counter(spec_of(DEIT_B))
    rows = []
    checks = [("ViT-Base [4]", DEIT_B, "ViT-B/16 is DeiT-B's architecture"), ("DeiT-Base/16 [13]", DEIT_B, "")]
    checks += [(f"EfficientFormer-{k} [16]", name, "") for k, name in EFFICIENTFORMERS.items()]
    for model, timm_name, why in checks:
        ref = reported(model)
        measured = counter(spec_of(timm_name))
        unit, ratio = _nearest_unit(ref["printed_G"], measured["macs"] / 1e9)
        paper = None
        if timm_name in EFFICIENTFORMERS.values():
            paper = reported(model.split(" [")[0], table1.PAPER)
        rows.append({
            "model": model, "timm_model": timm_name, "printed_G": ref["printed_G"],
            "measured_gmacs": measured["macs"] / 1e9, "measured_params_M": measured["params"] / 1e6,
            "ratio": ratio, "unit": unit, "table_unit": ref["printed_unit"],
            "agrees_with_table": unit == ref["printed_unit"],
            "published_gmacs": paper["printed_G"] if paper else None, "note": why,
        })
    by = {r["model"]: r for r in rows}
    l7 = by["EfficientFormer-L7 [16]"]
    deit_g = deit["macs"] / 1e9
    printed_change = l7["printed_G"] - reported("DeiT-Base/16 [13]")["printed_G"]
    one_unit_change = l7["measured_gmacs"] - deit_g
    eff = [by[f"EfficientFormer-{k} [16]"] for k in EFFICIENTFORMERS]

    def joined(key: str, spec: str) -> str:
        return "/".join(format(r[key], spec) for r in eff)

    text = (
        f"The study's 'FLOPs (G)' column mixes two units. DeiT-B's {by['DeiT-Base/16 [13]']['printed_G']} "
        f"is {by['DeiT-Base/16 [13]']['ratio']:.3f} x our count of {deit_g:.2f} GMACs (fvcore counts one "
        f"multiply-add as one 'flop'), so it is MACs; in FLOPs DeiT-B needs {2 * deit_g:.1f} G. "
        f"EfficientFormer-L1/L3/L7's {joined('printed_G', 'g')} are {joined('ratio', '.2f')} x our counts of "
        f"{joined('measured_gmacs', '.2f')} GMACs (published: {joined('published_gmacs', 'g')} GMACs), i.e. "
        f"doubled into FLOPs. "
        f"The change column then subtracts MACs from FLOPs: it gives EfficientFormer-L7 {printed_change:+.1f} G "
        f"against DeiT-B, while in one unit L7 needs {one_unit_change:+.2f} GMACs ({2 * one_unit_change:+.1f} "
        f"GFLOPs), i.e. less compute than DeiT-B, not more."
    )
    return {"id": "units", "title": "Units of the study's FLOPs column", "rows": rows,
            "deit_gmacs": deit_g, "l7_printed_change": printed_change, "l7_change_gmacs": one_unit_change,
            "text": text}


def schedule_finding(counter: Counter, rates: tuple[float, ...] = RATES) -> dict[str, Any]:
    """Which keep-ratio schedule reproduces the study's DyViT-Sub GFLOPs (DeiT-B at 224)."""
    from vitprune.methods import token_schedule  # local: keeps `import vitprune.study.audit` free of torch

    rows = []
    for rate in rates:
        study = reported(f"DyViT-Sub/{rate:g}")["printed_G"]
        row = {"base_rate": rate, "study_G": study}
        for schedule in SCHEDULES:
            g = counter.gmacs(spec_of(DEIT_B, 224, token_spec(rate, schedule)))
            row[f"{schedule}_gmacs"] = g
            row[f"{schedule}_error"] = g - study
            row[f"{schedule}_rounds_to_study"] = round(g, 1) == study
            row[f"{schedule}_keep_counts"] = token_schedule.keep_counts(
                196, rate, schedule, locations=LOCATIONS, allow_empty_stage=True)
        rows.append(row)
    summary = {}
    for schedule in SCHEDULES:
        errors = [abs(r[f"{schedule}_error"]) for r in rows]
        summary[schedule] = {"max_abs_error": max(errors), "mean_abs_error": sum(errors) / len(errors),
                             "matches": sum(r[f"{schedule}_rounds_to_study"] for r in rows)}
    best = min(SCHEDULES, key=lambda s: (-summary[s]["matches"], summary[s]["mean_abs_error"]))
    params_M = counter(spec_of(DEIT_B, 224, token_spec(rates[0], best)))["params"] / 1e6
    other = next(s for s in SCHEDULES if s != best)
    listing = ", ".join(f"{r['base_rate']:g}: {r['study_G']:g} vs {r['geometric_gmacs']:.3f} / {r['linear_gmacs']:.3f}"
                        for r in rows)
    text = (
        f"Counting DeiT-B at 224x224 with DynamicViT's predictors at blocks 3/6/9 (study vs geometric / "
        f"linear GMACs at each base rate: {listing}), the {best} schedule reproduces "
        f"{summary[best]['matches']} of {len(rows)} of the study's numbers to the printed decimal "
        f"(largest error {summary[best]['max_abs_error']:.3f} G) and the {other} schedule "
        f"{summary[other]['matches']} (largest error {summary[other]['max_abs_error']:.3f} G). "
        + ("So the study's models used the official geometric schedule (b, b^2, b^3), not the linear "
           "b, b-0.2, b-0.4 its section 4.1 describes." if best == "geometric" else
           "So the study's numbers follow the linear schedule its section 4.1 describes.")
        + f" The count includes the score predictors ({params_M:.2f} M parameters with them, the study's 89.4 M)."
    )
    return {"id": "schedule", "title": "Which keep-ratio schedule the study used", "rows": rows,
            "summary": summary, "best": best, "params_M": params_M,
            "text": text}


def layer9_finding(schedule: dict[str, Any] | None = None, num_patches: int = 196,
                   base_rate: float = 0.4) -> dict[str, Any]:
    """Could block 9 have kept 0 tokens at base rate 0.4? Keep counts under both schedules."""
    from vitprune.methods import token_schedule  # local: keeps `import vitprune.study.audit` free of torch

    counts = {s: token_schedule.keep_counts(num_patches, base_rate, s, locations=LOCATIONS, allow_empty_stage=True)
              for s in SCHEDULES}
    ratios = {s: token_schedule.schedule_ratios(base_rate, s, num_stages=len(LOCATIONS)) for s in SCHEDULES}
    text = (
        f"At base rate {base_rate:g} the linear schedule's last ratio is {ratios['linear'][-1]:g}, so "
        f"block {LOCATIONS[-1]} would get {counts['linear'][-1]} of {num_patches} patch tokens (keep counts "
        f"{counts['linear']}, CLS only); the geometric schedule's is {base_rate:g}^3 = {ratios['geometric'][-1]:.3f}, "
        f"floor({num_patches} x {ratios['geometric'][-1]:.3f}) = {counts['geometric'][-1]} tokens (keep counts "
        f"{counts['geometric']})."
    )
    used = None
    if schedule is not None:
        used = schedule["best"]
        row = next((r for r in schedule["rows"] if r["base_rate"] == base_rate), None)
        text += (f" The study's GFLOPs match the {used} schedule (previous finding), so the last pruning stage of "
                 f"its DyViT-Sub/{base_rate:g} (before block {LOCATIONS[-1]}, 0-based) kept {counts[used][-1]} "
                 f"patch tokens plus CLS, "
                 + ("not 0: its 63.1 % cannot be blamed on an empty layer 9." if counts[used][-1] > 0 else
                    "i.e. layer 9 really saw only the CLS token."))
        if row is not None:
            text += (f" (The {base_rate:g} row alone cannot tell: {row['geometric_gmacs']:.3f} and "
                     f"{row['linear_gmacs']:.3f} GMACs both round to {row['study_G']:g}.)")
    return {"id": "layer9", "title": "Did layer 9 keep 0 tokens at base rate 0.4?", "keep_counts": counts,
            "ratios": ratios, "schedule_used": used,
            "kept_at_last_stage": counts[used][-1] if used else None, "text": text}


def resolution_finding(counter: Counter, schedule: str = "geometric") -> dict[str, Any]:
    """Which input size DynamicViT-B/0.7's 11.2 G belongs to (the study lists it at 384x384)."""
    study_row = reported("DynamicViT-B/0.7 [9]")
    printed = study_row["printed_G"]
    sizes = {}
    for size in (224, 384):
        sizes[size] = {"deit_gmacs": counter.gmacs(spec_of(DEIT_B, size)),
                       "dynamicvit_gmacs": counter.gmacs(spec_of(DEIT_B, size, token_spec(0.7, schedule)))}
    nearest = min(sizes, key=lambda s: abs(sizes[s]["dynamicvit_gmacs"] - printed))
    ours_sub = reported("DyViT-Sub/0.7")["printed_G"]
    text = (
        f"DeiT-B needs {sizes[224]['deit_gmacs']:.2f} GMACs at 224x224 and {sizes[384]['deit_gmacs']:.2f} at "
        f"384x384; with DynamicViT at base rate 0.7 ({schedule}) it needs {sizes[224]['dynamicvit_gmacs']:.2f} "
        f"and {sizes[384]['dynamicvit_gmacs']:.2f}. The {printed:g} G the study lists for DynamicViT-B/0.7 at "
        f"{study_row['img_size']}x{study_row['img_size']} is a {nearest}x{nearest} number (Rao et al. train "
        f"and evaluate at 224). The study's own DyViT-Sub/0.7 ({ours_sub:g} G) is the same architecture, so "
        f"its '+{ours_sub - printed:.1f} GFLOPs' against DynamicViT-B/0.7 is a counting difference "
        f"(our count: {sizes[224]['dynamicvit_gmacs']:.2f}), not an effect of training data or epochs as the "
        f"study suggests."
    )
    return {"id": "resolution", "title": "The resolution listed for DynamicViT-B/0.7", "sizes": sizes,
            "printed_G": printed, "listed_img_size": study_row["img_size"], "matches_img_size": nearest,
            "text": text}


def aligned_classes(num_classes: int, pad: bool = False) -> int:
    """Classes whose ImageFolder index (position of the folder name in sorted order) equals
    the label the folder was named after, for folders named "0".."N-1" (or zero-padded)."""
    width = len(str(num_classes - 1)) if pad else 0
    names = sorted(f"{label:0{width}d}" for label in range(num_classes))
    return sum(int(name) == position for position, name in enumerate(names))


def scramble_finding(class_counts: tuple[int, ...] = (10, 1000)) -> dict[str, Any]:
    """How numeric ImageFolder folder names scramble labels (the study's 1 % accuracy)."""
    rows = [{"num_classes": n, "aligned": aligned_classes(n), "aligned_padded": aligned_classes(n, pad=True),
             "perfect_model_top1": 100.0 * aligned_classes(n) / n} for n in class_counts]
    first_broken = next(n for n in range(2, 10_000) if aligned_classes(n) < n)
    big = rows[-1]
    aligned_names = [name for position, name in enumerate(sorted(str(i) for i in range(big["num_classes"])))
                     if int(name) == position]
    small = [r for r in rows if r["num_classes"] < first_broken]
    text = (
        f"ImageFolder numbers classes by the sorted folder names, and '0'..'{big['num_classes'] - 1}' sort as "
        f"strings ('0', '1', '10', '100', ...). Only {big['aligned']} of {big['num_classes']} classes keep their "
        f"label ({', '.join(aligned_names)}), so even a perfect model scores {big['perfect_model_top1']:.1f} % "
        f"on a class-balanced validation set -- the study's '1 % validation accuracy' of pretrained DeiT-B. "
        f"Zero-padded names keep all {big['aligned_padded']} aligned. "
        + (f"With {', '.join(str(r['num_classes']) for r in small)} classes all {small[0]['aligned']} stay aligned, "
           if small else "")
        + f"so the bug only shows from {first_broken} classes on: a Fashion-MNIST export cannot reveal it."
    )
    return {"id": "scramble", "title": "Numeric ImageFolder names scramble labels", "rows": rows,
            "first_scrambled_num_classes": first_broken, "aligned_names": aligned_names, "text": text}


# ---------------------------------------------------------------- the report


def _skipped(fid: str, title: str) -> dict[str, Any]:
    return {"id": fid, "title": title, "skipped": True,
            "text": "Skipped: it needs DeiT-B/EfficientFormer MAC counts (run with audit_models = True)."}


def run_audit(out_dir: str | os.PathLike | None = None, *, counter: Counter | None = None,
              cache_path: str | os.PathLike | None = None, measure_models: bool = True,
              rates: tuple[float, ...] = RATES) -> list[dict[str, Any]]:
    """Compute every finding; write `<out_dir>/audit.md` when out_dir is given.

    `measure_models=False` skips the findings that count DeiT-B and EfficientFormer (seconds
    each; the smoke profile skips them) and keeps the pure ones (keep counts, label scramble).
    """
    findings: list[dict[str, Any]] = []
    if measure_models:
        counter = counter or Counter(cache_path)
        try:
            findings.append(units_finding(counter))
            schedule = schedule_finding(counter, rates)
            findings.append(schedule)
            findings.append(layer9_finding(schedule))
            findings.append(resolution_finding(counter, schedule["best"]))
        finally:
            counter.release()
    else:
        findings += [_skipped("units", "Units of the study's FLOPs column"),
                     _skipped("schedule", "Which keep-ratio schedule the study used"),
                     layer9_finding(None),
                     _skipped("resolution", "The resolution listed for DynamicViT-B/0.7")]
    findings.append(scramble_finding())
    if out_dir is not None:
        write_audit(findings, out_dir)
    return findings


def to_markdown(findings: list[dict[str, Any]]) -> str:
    lines = ["# Audit of the study's numbers", "",
             "Computed by `vitprune.study.audit` (MACs: `vitprune.measure.count` on random-init timm models, "
             "batch 1, eval mode, attention matmuls counted; keep counts: `vitprune.methods.token_schedule.keep_counts`). "
             "GMACs = multiply-accumulates / 1e9; GFLOPs = 2 x GMACs.", ""]
    for f in findings:
        lines += [f"## {f['title']}", "", f["text"], ""]
        if f["id"] == "units" and not f.get("skipped"):
            lines += ["| row | printed | our GMACs | printed / ours | unit |", "|---|---:|---:|---:|---|"]
            lines += [f"| {r['model']} | {r['printed_G']:g} | {r['measured_gmacs']:.3f} | {r['ratio']:.3f} | "
                      f"{r['unit']} |" for r in f["rows"]] + [""]
        if f["id"] == "schedule" and not f.get("skipped"):
            lines += ["| base rate | study G | geometric GMACs | linear GMACs | geometric keep | linear keep |",
                      "|---:|---:|---:|---:|---|---|"]
            lines += [f"| {r['base_rate']:g} | {r['study_G']:g} | {r['geometric_gmacs']:.3f} | "
                      f"{r['linear_gmacs']:.3f} | {r['geometric_keep_counts']} | {r['linear_keep_counts']} |"
                      for r in f["rows"]] + [""]
        if f["id"] == "scramble":
            lines += ["| classes | aligned | aligned (zero-padded) | perfect-model top-1 (%) |", "|---:|---:|---:|---:|"]
            lines += [f"| {r['num_classes']} | {r['aligned']} | {r['aligned_padded']} | {r['perfect_model_top1']:.1f} |"
                      for r in f["rows"]] + [""]
    return "\n".join(lines)


def write_audit(findings: list[dict[str, Any]], out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "audit.md"
    tmp = out / "audit.md.tmp"
    tmp.write_text(to_markdown(findings))
    os.replace(tmp, path)
    return path
