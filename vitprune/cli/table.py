"""`python -m vitprune table`: assemble Table 1 from a profile's runs (`vitprune.study.results`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitprune.errors import UserError
from vitprune.study import comparisons, pipeline, results, run_folders, table1


def main(argv: list[str]) -> int:
    """`python -m vitprune table --profile P [--runs-root DIR] [--out DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m vitprune table",
                                     description="Assemble Table 1 from a profile's runs and write "
                                                 "table1.md/.csv/.tex")
    parser.add_argument("--profile", default="fmnist", help="profile whose runs to read (default: fmnist)")
    parser.add_argument("--runs-root", help="where run folders are (default: <repo>/runs)")
    parser.add_argument("--out", help="output folder (default: <runs root>/<profile>/table/, with --seeds N > 1 "
                                      "its <N>seeds/ subfolder; the committed figures/ come from notebook 05)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="gather the fine-tune seeds 0..N-1 of notebooks 02-04 (default: every seed on disk)")
    parser.add_argument("--study", action="store_true", help="also the runs of params/<profile>/study.yaml (make study)")
    parser.add_argument("--measured-only", action="store_true", help="leave out the reported reference rows")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    left_out: list[str] = []
    runs = results.collect_runs(args.runs_root, args.profile,
                                seeds=list(range(args.seeds)) if args.seeds else None, left_out=left_out,
                                study=args.study)
    results.require_runs(runs, args.runs_root, args.profile)
    for line in pipeline.missing_runs(args.profile, args.runs_root, args.seeds or 1, args.study):
        print(f"missing row: {line}", file=sys.stderr)
    for line in left_out:
        print(f"left out: {line}", file=sys.stderr)
    df = table1.table1(runs, include_reference=not args.measured_only, drops=comparisons.baseline_drops(runs))
    out = Path(args.out) if args.out else run_folders.runs_root_or_default(args.runs_root) / args.profile / "table"
    if not args.out and (args.seeds or 1) > 1:
        out /= f"{args.seeds}seeds"
    paths = table1.write_table1(df, out)
    print(paths["table1.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
