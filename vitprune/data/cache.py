"""The dataset cache and ImageFolder export.

`build_cache` loads a source, takes the balanced subsets, converts every image to RGB,
verifies the labels and saves the splits atomically: written to a temporary directory,
completed with a marker file and only then renamed into place, so a crash never leaves
something `load_cache` would take as whole. `export_imagefolder` writes a split with folder
names that sort in label order and re-reads what it wrote to prove it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitprune import param_rules
from vitprune.progress import bar as progress_bar
from vitprune.data.folders import (IMG_EXTENSIONS, export_folder_name, imagefolder_dataset, imagefolder_splits,
                                   scan_imagefolder)
from vitprune.data.format import (TRAIN_SPLIT, BadImageError, class_names, column, features, labels_of,
                                  rgb_image_bytes, short_list)
from vitprune.data.sources import FASHION_MNIST_IDX_DIR, hf_imagenet_dataset, load_fashion, resolve_fashion_source
from vitprune.data.subsets import balanced_indices, balanced_subset
from vitprune.errors import UserError

SOURCES = param_rules.CHOICES["source"]
CACHE_MARKER = "vitprune_cache.json"
CACHE_FORMAT = "vitprune-data/1"


def _convert_batch(batch: dict[str, list], root: str | None = None) -> dict[str, list]:
    """datasets.map worker: read/verify/convert every image; bad ones get an error message.

    PIL only warns (DecompressionBombWarning) about an image between 1x and 2x its pixel limit
    and decodes it anyway; here it is a bad image like one past 2x, not a line lost in the log."""
    images, errors = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for item in batch["image"]:
            data, path = item.get("bytes"), item.get("path")
            name = path or "<in-memory image>"
            try:
                if data is None:
                    full = Path(root) / path if root and path else Path(path)
                    name = str(full)
                    try:
                        data = full.read_bytes()
                    except OSError as exc:
                        raise BadImageError(f"{full}: cannot read file ({exc})") from None
                try:
                    converted = rgb_image_bytes(data, name)
                except Image.DecompressionBombWarning as exc:
                    raise BadImageError(f"{name}: image too large to decode safely ({exc}); replace it with a smaller "
                                        "copy, or pass skip_bad=True (--skip-bad) to skip and count it") from None
                images.append({"bytes": converted, "path": path})
                errors.append("")
            except BadImageError as exc:
                images.append({"bytes": None, "path": path})
                errors.append(str(exc))
    return {"image": images, "_error": errors}


def convert_split(ds, work_dir: Path, split: str, skip_bad: bool = False, num_proc: int | None = None,
                  root: str | None = None) -> tuple[Any, list[str]]:
    """Verify and RGB-convert every image of a Dataset whose `image` column holds bytes or
    paths. Returns (dataset, error messages of skipped images). Without skip_bad the first
    bad images raise one UserError naming them."""
    import datasets

    names = class_names(ds)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    work_dir.mkdir(parents=True, exist_ok=True)
    converted = raw.map(
        _convert_batch, batched=True, batch_size=256, fn_kwargs={"root": root},
        num_proc=num_proc if num_proc and num_proc > 1 and len(raw) > 1000 else None,
        cache_file_name=str(work_dir / f"{split}-converted.arrow"), desc=f"RGB-convert {split}",
        features=datasets.Features({"image": datasets.Image(decode=False), "label": raw.features["label"],
                                    "_error": datasets.Value("string")}),
    )
    error_col = column(converted, "_error").astype(object)
    bad = np.flatnonzero(error_col != "")
    messages = [str(error_col[i]) for i in bad]
    if len(bad) and not skip_bad:
        raise BadImageError(f"{len(bad)} unreadable image(s) in split {split!r}: "
                            + " | ".join(messages[:3]) + (" | ..." if len(bad) > 3 else ""))
    if len(bad):
        keep = np.setdiff1d(np.arange(len(converted)), bad)
        converted = converted.select(keep)
    converted = converted.remove_columns("_error").cast(features(names))
    return converted, messages



# ------------------------------------------------------------------ the cache


def _count_labels(split) -> dict[str, int]:
    names = class_names(split)
    counts = np.bincount(labels_of(split), minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


def verify_labels(dsd, allow_absent: bool = False) -> dict[str, dict[str, int]]:
    """Check every split: ClassLabel names shared, labels in range, every class present
    (`allow_absent`: a class subset, absent classes count 0). Returns per-split per-class counts."""
    names = class_names(dsd)
    counts = {}
    for split, ds in dsd.items():
        labels = labels_of(ds)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise UserError(f"split {split!r}: labels outside 0..{len(names) - 1}; rebuild the cache")
        counts[split] = _count_labels(ds)
        empty = [n for n, c in counts[split].items() if c == 0]
        if empty and not allow_absent:
            raise UserError(f"split {split!r} has no examples of classes {short_list(empty)}; the source "
                            "or its class list is wrong")
    return counts


def save_cache(dsd, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """save_to_disk into <path>.tmp-<pid>, add the completion marker last, then rename into
    place (an old cache is moved aside first and removed after)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dsd.save_to_disk(str(tmp))
        marker = {"format": CACHE_FORMAT, "complete": True, "class_names": class_names(dsd),
                  "num_rows": {s: len(d) for s, d in dsd.items()}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **(info or {})}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def cache_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The completion marker of a cache, or None if absent/unreadable (= incomplete)."""
    marker = Path(path) / CACHE_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("complete") and info.get("format") == CACHE_FORMAT else None


def _looks_like_imagefolder(path: Path) -> bool:
    """Image files one or two levels down (<class>/<image>, <split>/<class>/<image>): a cache
    holds Arrow files there, never images."""
    return any(p.suffix.lower() in IMG_EXTENSIONS for pattern in ("*/*", "*/*/*") for p in path.glob(pattern))


def load_cache(path: str | os.PathLike):
    """The cached DatasetDict (memory-mapped; loads in seconds). Refuses a cache without its
    completion marker."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"dataset cache {path} does not exist: run notebook 00 first "
                        "(python -m vitprune run --only 00_data_cache)")
    if cache_info(path) is None:
        if _looks_like_imagefolder(path):
            raise UserError(f"{path} is an ImageFolder (class folders of images), not a dataset cache: build a cache "
                            f"from it first with: python -m vitprune data cache OUT --source imagefolder "
                            f"--imagefolder {path}")
        raise UserError(f"dataset cache {path} is incomplete (no {CACHE_MARKER} completion marker; an interrupted "
                        "run?): re-run notebook 00 (python -m vitprune run --only 00_data_cache --force)")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"dataset cache {path} cannot be loaded ({exc}): re-run notebook 00 with --force") from None


# How a cache's labels were assigned (its report's "label_mapping")
LABEL_MAPPINGS = {
    "reference": "folder names matched to the class list (every class present)",
    "reference-subset": "class subset: folder names matched by name to the class list's indices (some classes absent)",
    "numeric": "numeric folder names read as the labels they spell",
    "prefixed": "<index>_<name> folders read as their index",
    "sorted": "sorted folder names (no class list given)",
}


@dataclass
class CacheSpec:
    """Everything that determines a cache's content (compared to reuse an existing one)."""

    source: str = "auto"
    idx_dir: str = FASHION_MNIST_IDX_DIR
    imagefolder_dir: str = ""
    classes_file: str = ""
    class_subset: bool = False  # ImageFolder holds some of the class list's classes: map them by name
    train_per_class: int = 0
    eval_per_class: int = 0
    train_fraction: float = 0.0
    eval_fraction: float = 0.0
    skip_bad: bool = False
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _subset_args(split: str, spec: CacheSpec) -> dict[str, Any]:
    per_class = spec.train_per_class if split == TRAIN_SPLIT else spec.eval_per_class
    fraction = spec.train_fraction if split == TRAIN_SPLIT else spec.eval_fraction
    return {"per_class": per_class or None, "fraction": fraction or None, "seed": spec.seed}


def _subset(ds, split: str, spec: CacheSpec):
    return balanced_subset(ds, **_subset_args(split, spec))


def build_cache(cache_dir: str | os.PathLike, spec: CacheSpec | None = None, *, reuse: bool = True,
                num_proc: int | None = None, **kwargs) -> dict[str, Any]:
    """Load the source named by `spec` (or keyword fields of CacheSpec), take the balanced
    subsets, convert every image to RGB, verify the labels and save atomically.

    Returns the cache report (also stored in the marker): cache_path, source, class_names,
    counts {split: {class: n}}, skipped_bad {split: n}, bad_examples, wall_time_s, reused.
    """
    spec = spec or CacheSpec(**kwargs)
    if spec.source not in SOURCES:
        raise UserError(f"unknown data source {spec.source!r}; choose one of {', '.join(SOURCES)}")
    cache_dir = Path(cache_dir).resolve()
    start = time.perf_counter()
    wanted = spec.as_dict()
    if spec.source == "auto":
        wanted["source"] = resolve_fashion_source("auto", spec.idx_dir)
    info = cache_info(cache_dir) if reuse else None
    if info and info.get("spec") == wanted:
        return {**info, "cache_path": str(cache_dir), "reused": True,
                "wall_time_s": time.perf_counter() - start}

    import datasets

    work = cache_dir.with_name(f".{cache_dir.name}.work-{os.getpid()}")
    naming = None
    skipped, bad_examples = {}, []
    try:
        if wanted["source"] in ("idx", "hub"):
            dsd = load_fashion(spec.source, spec.idx_dir,
                               select=lambda split, labels: balanced_indices(labels, **_subset_args(split, spec)))
            skipped = {s: 0 for s in dsd}
        else:
            if wanted["source"] == "imagefolder":
                if not spec.imagefolder_dir:
                    raise UserError("source 'imagefolder' needs imagefolder_dir (the folder holding class "
                                    "folders, or train/ and val/ each holding them)")
                raw = imagefolder_dataset(spec.imagefolder_dir, spec.classes_file or None, subset=spec.class_subset)
                root = str(Path(spec.imagefolder_dir).resolve())
                first = next(iter(imagefolder_splits(spec.imagefolder_dir).values()))
                naming = scan_imagefolder(first, spec.classes_file or None, with_files=False,
                                          subset=spec.class_subset).naming
            else:
                raw, root = hf_imagenet_dataset(), None
            out = {}
            for split, ds in raw.items():
                ds = _subset(ds, split, spec)
                out[split], messages = convert_split(ds, work, split, skip_bad=spec.skip_bad,
                                                     num_proc=num_proc, root=root)
                skipped[split] = len(messages)
                bad_examples += messages[:5]
            dsd = datasets.DatasetDict(out)
        counts = verify_labels(dsd, allow_absent=spec.class_subset)
        mapping = (LABEL_MAPPINGS.get(naming, naming) if wanted["source"] == "imagefolder"
                   else "the source's own class labels")
        report = {"source": wanted["source"], "spec": wanted, "label_mapping": mapping, "class_names": class_names(dsd), "counts": counts,
                  "skipped_bad": skipped, "bad_examples": bad_examples}
        save_cache(dsd, cache_dir, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**report, "cache_path": str(cache_dir), "reused": False, "wall_time_s": time.perf_counter() - start}


# ------------------------------------------------------------------ export


def _image_ext(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        fmt = (img.format or "PNG").lower()
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}")


def export_imagefolder(split, out_dir: str | os.PathLike, replace: bool = False) -> dict[str, int]:
    """Write one split as out_dir/<NNN_name>/<index>.<ext> (the stored bytes, no re-encoding),
    folder names sorting in label order; then re-scan the folder and check that the mapping
    and counts round-trip. Written to a temp dir and renamed; with `replace`, an earlier export in
    out_dir is removed only once the new one is complete. Returns {folder: label}."""
    import datasets

    names = class_names(split)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not replace:
        raise UserError(f"export target {out_dir} exists and is not empty; remove it or choose another directory")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    folders = [export_folder_name(i, n, len(names)) for i, n in enumerate(names)]
    try:
        for folder in folders:
            (tmp / folder).mkdir(parents=True)
        raw = split.cast_column("image", datasets.Image(decode=False))
        width = len(str(max(len(raw) - 1, 0)))
        for i, row in enumerate(progress_bar(raw, total=len(raw), desc="export", unit="img", mininterval=1.0)):
            data = row["image"]["bytes"]
            (tmp / folders[row["label"]] / f"{i:0{width}d}{_image_ext(data)}").write_bytes(data)
        scan = scan_imagefolder(tmp, names)
        expected = {f: i for i, f in enumerate(folders)}
        if scan.mapping != expected or not scan.sort_order_is_label_order:
            raise RuntimeError(f"export round trip failed: wrote {expected}, read back {scan.mapping}")
        want_counts = _count_labels(split)
        got_counts = {names[scan.mapping[f]]: n for f, n in scan.counts.items()}
        if got_counts != want_counts:
            raise RuntimeError(f"export round trip failed: counts {want_counts} written, {got_counts} read back")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return expected
