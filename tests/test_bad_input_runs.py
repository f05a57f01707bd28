"""Bad values never reach a kernel and never touch a good run: every range and allowed value is
checked by the CLI first (`param_rules`), each mistake is one error line."""

from pathlib import Path

import pytest

from vitprune import param_rules
from vitprune.__main__ import main as cli
from vitprune.study import config, run_folders

BAD = [
    ("01_deit_baseline", "epochs=-1", "parameter 'epochs' must be >= 0, got -1"),
    ("01_deit_baseline", "batch_size=0", "parameter 'batch_size' must be >= 1, got 0"),
    ("01_deit_baseline", "num_processes=0", "parameter 'num_processes' must be >= 1"),
    ("01_deit_baseline", "mixed_precision=fp8", "parameter 'mixed_precision' must be one of no, bf16, fp16, auto"),
    ("01_deit_baseline", "threads=0", "parameter 'threads' must be >= 1"),
    ("01_deit_baseline", "eval_batch_size=0", "parameter 'eval_batch_size' must be >= 1"),
    ("01_deit_baseline", "img_size=0", "parameter 'img_size' must be >= 1"),
    ("01_deit_baseline", "checkpoint=no/such.pt", "parameter 'checkpoint' names no/such.pt, which does not exist"),
    ("02_token_pruning", "batch_size=0", "parameter 'batch_size' must be >= 1"),
    ("02_token_pruning", "epochs=-1", "parameter 'epochs' must be >= 0"),
    ("02_token_pruning", "base_rate=1.5", "parameter 'base_rate' must be in (0, 1], got 1.5"),
    ("02_token_pruning", "backbone_decisions=sample", "parameter 'backbone_decisions' must be one of gumbel, topk"),
    ("03_block_pruning", "target_mac_ratio=0.5", "parameter 'target_mac_ratio' must be 0 (off) or >= 1"),
    ("03_block_pruning", "keep_heads=2", "parameter 'keep_heads' must be in [0, 1]"),
    ("04_combination", "order=sideways", "parameter 'order' must be one of both, token_then_block, block_then_token"),
    ("05_analysis", "edge_batch_sizes=1,x", "parameter 'edge_batch_sizes' must be comma-separated ints >= 1"),
]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.notebook
def test_every_bad_value_is_one_line_and_the_good_runs_stay_byte_identical(smoke_runs, capsys):
    before = _files(smoke_runs)
    for notebook, override, fragment in BAD:
        argv = ["run", "--profile", "smoke", "--only", notebook, "--runs-root", str(smoke_runs.parent), "-p", override]
        assert cli(argv) == 2, override
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: -p override: ") and fragment in err, (override, err)
        assert "fix the -p value" in err or "give an existing path" in err
    assert _files(smoke_runs) == before
    assert not list(smoke_runs.rglob("*.partial"))


def test_every_profile_value_obeys_the_rules():
    """Each profile's YAML and sweep pass the rules (planning validates them all)."""
    from vitprune.study import pipeline

    for profile in ("fmnist", "smoke", "imagenet"):
        assert pipeline.plan(profile, pipeline.available_notebooks(), {}, run_folders.runs_root_or_default(None))


def test_every_rule_names_a_declared_parameter():
    declared = set()
    for notebook in config.NOTEBOOKS:
        declared |= set(config.declared_parameters(notebook))
    assert set(param_rules.RULES) | set(param_rules.PATHS) <= declared


def test_run_ends_by_saying_where_table1_and_the_book_are(smoke_runs, capsys):
    assert cli(["run", "--profile", "smoke", "--only", "05_analysis", "--study",
                "--runs-root", str(smoke_runs.parent)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    table = smoke_runs / "05_analysis" / "figures" / "table1.md"
    assert last.startswith(f"Table 1: {table} ") and "python -m vitprune book --profile smoke" in last
    assert table.is_file()
