"""`python -m vitprune baseline` trains the embedded profile's baseline through notebook 01
(`make baseline`); `python -m vitprune release RUN_DIR` makes a finished training run the
released baseline that every other run of the profile starts from (`vitprune.study.release`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitprune.errors import UserError
from vitprune.study import config, pipeline, release, results, run_folders

BASELINE_FILE = config.BASELINE_FILE
NOTEBOOK = "01_deit_baseline"


def baseline_overrides(profile: str) -> dict:
    """`params/<profile>/baseline.yaml`: notebook 01's parameters for training the baseline."""
    path = config.profile_dir(profile) / BASELINE_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: profile {profile!r} has no baseline to train (its notebook 01 "
                        "evaluates given weights)")
    source = str(path.relative_to(config.project_root()))
    return config.validate(config.declared_parameters(NOTEBOOK), config.load_yaml(path), source)


def default_runs_root() -> Path:
    return run_folders.runs_root_or_default(None) / "baseline"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vitprune baseline",
        description="Train the profile's baseline: notebooks 00 and 01 with params/<profile>/baseline.yaml, as "
                    "pipeline runs under <runs root>/<profile>/ (nothing released: see `python -m vitprune release`).")
    parser.add_argument("--profile", default="fmnist")
    parser.add_argument("--runs-root", default=None, help="where the runs go (default: <repo>/runs/baseline)")
    parser.add_argument("--force", action="store_true", help="train again even when the run is up to date")
    args = parser.parse_args(argv)
    overrides = baseline_overrides(args.profile)
    root = Path(args.runs_root).resolve() if args.runs_root else default_runs_root()
    pipeline.run_profile(args.profile, only="00_data_cache", runs_root=str(root))
    pipeline.run_profile(args.profile, only=NOTEBOOK, force=args.force, overrides=overrides, runs_root=str(root))
    run_dir = run_folders.run_dir(root, args.profile, NOTEBOOK)
    target = release_target(args.profile)
    print(f"trained: {run_dir}\nto make it the released baseline every run of {args.profile} starts from:\n"
          f"  python -m vitprune release {run_dir} --profile {args.profile}"
          + (" --replace" if target.exists() else "") + f"\nthen commit {target.parent}/", flush=True)
    return 0


def release_target(profile: str) -> Path:
    """Where a profile's released baseline goes: the `checkpoint` its notebook-01 YAML evaluates."""
    # the YAML as written, not validated: the file may not be there yet
    value = config.load_yaml(config.profile_dir(profile) / f"{NOTEBOOK}.yaml").get("checkpoint", "")
    if not value or release.RELEASES_DIR not in Path(value).parts:
        raise UserError(f"params/{profile}/{NOTEBOOK}.yaml does not evaluate a released file (its checkpoint is "
                        f"{value!r}); pass --to releases/{profile}/{release.CHECKPOINT_FILE}")
    return config.resolve_path(value)


def training_command(profile: str, params: dict) -> str:
    """The command that trains a run with `params`: `make baseline`'s when they are its settings
    (the notebook's defaults, the profile's YAML, baseline.yaml), else notebook 01 with the
    differences as -p overrides."""
    if not (config.profile_dir(profile) / BASELINE_FILE).is_file():
        return f"python -m vitprune run --profile {profile} --only {NOTEBOOK}"
    wanted = {k: p.default for k, p in config.declared_parameters(NOTEBOOK).items() if k not in config.INJECTED}
    wanted.update(config.load_yaml(config.profile_dir(profile) / f"{NOTEBOOK}.yaml"))
    wanted.update(baseline_overrides(profile))
    ran = {**wanted, **{k: v for k, v in params.items() if k not in config.INJECTED}}
    differ = sorted(k for k in ran if ran[k] != wanted.get(k))
    if not differ:
        return f"python -m vitprune baseline --profile {profile} (make baseline)"
    return (f"notebook {NOTEBOOK} with make baseline's settings except "
            + ", ".join(f"{k}={json.dumps(ran[k])}" for k in differ))


def release_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vitprune release",
        description="Copy a finished training run of notebook 01 (make baseline) into the committed released file "
                    "with its sha256 and the run's record.")
    parser.add_argument("run_dir", help="the run folder, e.g. runs/baseline/fmnist/01_deit_baseline")
    parser.add_argument("--profile", default="fmnist", help="whose release to write (default: fmnist)")
    parser.add_argument("--to", default=None, help="the released file (default: the checkpoint the profile's "
                                                   "notebook 01 evaluates)")
    parser.add_argument("--replace", action="store_true", help="replace an existing release")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    manifest_path = run_dir / run_folders.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    why = results.not_a_run(run_dir, manifest)
    if why:
        raise UserError(f"{run_dir} is not a finished pipeline run ({why}); release a run of `make baseline`")
    if manifest.get("notebook") != NOTEBOOK:
        raise UserError(f"{run_dir} is a run of {manifest.get('notebook')}, not of {NOTEBOOK}")
    target = Path(args.to).resolve() if args.to else release_target(args.profile)
    record = release.write(run_dir, target, results.read_metrics(run_dir), manifest,
                           command=training_command(manifest.get("profile", args.profile), manifest["params"]),
                           replace=args.replace)
    print(f"released {target} ({record['bytes'] / 1e6:.2f} MB, sha256 {record['sha256'][:16]}...): top-1 "
          f"{record['top1']:.2f} % on {record['eval_samples']} images; commit {target.parent}/", flush=True)
    return 0
