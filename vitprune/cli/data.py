"""`python -m vitprune data cache | export | check`: build a dataset cache, export one as
ImageFolder(s), print the folder -> label mapping an ImageFolder loads with.

Imports only the torch-free data modules, so the command starts without torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vitprune.data.cache import SOURCES, CacheSpec, build_cache, export_imagefolder, load_cache
from vitprune.data.folders import check_imagefolder
from vitprune.data.sources import FASHION_MNIST_IDX_DIR
from vitprune.errors import UserError

def _print_check(report: dict[str, Any]) -> None:
    for split, rep_ in (report.get("splits") or {"": report}).items():
        print(f"ImageFolder {rep_['root']}{f' ({split})' if split else ''}: {rep_['num_classes']} classes, "
              f"{rep_['num_images']} images, folders named {rep_['naming']}")
        print(f"  {'folder':<24} {'label':>5}  {'class':<24} {'images':>7}")
        for folder, label in rep_["mapping"].items():
            print(f"  {folder:<24} {label:>5}  {rep_['class_names'][label]:<24} {rep_['counts'][folder]:>7}")
        if rep_.get("warning"):
            print(f"  note: {rep_['warning']}")


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        for key, value in obj.items():
            print(f"{key}: {value}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitprune data",
                                     description="Datasets as Hugging Face DatasetDicts with correct labels, cached on disk.")
    sub = parser.add_subparsers(dest="verb", required=True)

    check = sub.add_parser("check", help="print the folder -> label mapping an ImageFolder loads with")
    check.add_argument("path", help="folder holding class folders (or train/ val/ each holding them)")
    check.add_argument("--classes", default=None,
                       help="reference class list: one name per line, line i = label i ('imagenet' = timm's wnids)")
    check.add_argument("--subset", action="store_true",
                       help="the folders hold some of the --classes (e.g. Imagenette wnids): map them by name")
    check.add_argument("--json", action="store_true")

    cache = sub.add_parser("cache", help="build a dataset cache (what notebook 00 does)")
    cache.add_argument("out", help="cache directory")
    cache.add_argument("--source", default="auto", choices=SOURCES)
    cache.add_argument("--idx-dir", default=FASHION_MNIST_IDX_DIR)
    cache.add_argument("--imagefolder", default="")
    cache.add_argument("--classes", default="")
    cache.add_argument("--class-subset", action="store_true", help="the ImageFolder holds some of --classes")
    cache.add_argument("--train-per-class", type=int, default=0)
    cache.add_argument("--eval-per-class", type=int, default=0)
    cache.add_argument("--train-fraction", type=float, default=0.0)
    cache.add_argument("--eval-fraction", type=float, default=0.0)
    cache.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images")
    cache.add_argument("--seed", type=int, default=0)
    cache.add_argument("--num-proc", type=int, default=None)
    cache.add_argument("--force", action="store_true", help="rebuild even if an identical cache exists")
    cache.add_argument("--json", action="store_true")

    export = sub.add_parser("export", help="write a cache as ImageFolder(s) with label-ordered names")
    export.add_argument("cache", help="cache directory (from notebook 00 or `data cache`)")
    export.add_argument("out", help="output directory (one sub-folder per split unless --split)")
    export.add_argument("--split", default=None)
    export.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    if args.verb == "check":
        report = check_imagefolder(args.path, args.classes, subset=args.subset)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_check(report)
    elif args.verb == "cache":
        spec = CacheSpec(source=args.source, idx_dir=args.idx_dir, imagefolder_dir=args.imagefolder,
                         class_subset=args.class_subset,
                         classes_file=args.classes, train_per_class=args.train_per_class,
                         eval_per_class=args.eval_per_class, train_fraction=args.train_fraction,
                         eval_fraction=args.eval_fraction, skip_bad=args.skip_bad, seed=args.seed)
        _print(build_cache(args.out, spec, reuse=not args.force, num_proc=args.num_proc), args.json)
    elif args.verb == "export":
        if Path(args.out).is_file():
            raise UserError(f"export OUT {args.out} is a file; give a folder to write the ImageFolder into")
        dsd = load_cache(args.cache)
        if args.split is not None:
            if args.split not in dsd:
                raise UserError(f"cache {args.cache} has splits {list(dsd)}, not {args.split!r}")
            targets = {args.split: Path(args.out)}
        else:
            targets = {s: Path(args.out) / s for s in dsd}
        # every target checked before the first is written: a clash on the last split would
        # otherwise leave the first ones written, and the rerun would clash on those
        taken = [str(t) for t in targets.values() if t.is_file() or (t.is_dir() and any(t.iterdir()))]
        if taken:
            raise UserError(f"export target(s) {', '.join(taken)} already exist and are not empty; nothing was "
                            "written: remove them or choose another output folder")
        result = {s: export_imagefolder(dsd[s], t) for s, t in targets.items()}
        _print({"out": str(args.out), "mapping": result}, args.json)
    return 0
