"""`python -m vitprune run`: execute a profile's notebooks in order with papermill
(the runner is `vitprune.study.pipeline`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vitprune.errors import UserError
from vitprune.study import config, pipeline, run_folders


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitprune run", description=pipeline.__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="fmnist", help="params/<profile>/ to use (default: fmnist)")
    parser.add_argument("--only", help="comma-separated notebook names to run (e.g. 02_token_pruning)")
    parser.add_argument("--force", action="store_true", help="re-run even when up to date")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of every selected notebook that declares it")
    parser.add_argument("--runs-root", help="where run folders go (default: <repo>/runs)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="repeat the fine-tunes (notebooks 02-04) over N seeds from the same baseline, each a run "
                             "of its own; 05 then reports mean, std and paired intervals (default: 1)")
    parser.add_argument("--study", action="store_true",
                        help="also the runs params/<profile>/study.yaml names (make study: every control, the study's "
                             "linear-schedule rate)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="runs at most N notebooks at once (default: as many as their threads fit the cores; "
                             "1: one after the other)")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    overrides = dict(config.parse_override(text) for text in args.param)
    start = time.perf_counter()
    summaries = pipeline.run_profile(args.profile, args.only, args.force, overrides, args.runs_root, args.seeds,
                                     study=args.study, jobs=args.jobs)
    ran = sum(s["status"] == "ran" for s in summaries)
    print(f"done: {ran} run(s) executed, {len(summaries) - ran} up to date, "
          f"{time.perf_counter() - start:.1f} s in all", flush=True)
    analysis = next((s for s in summaries if s["run"] == run_folders.FIGURES_NOTEBOOK), None)
    if analysis:  # where to look next
        table = Path(analysis["run_dir"]) / run_folders.FIGURES_SUBDIR / "table1.md"
        print(f"Table 1: {table} (the figures, equal_macs.md and audit.md beside it); the executed study as "
              f"web pages: python -m vitprune book --profile {args.profile} (make book)", flush=True)
    return 0
