import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tinydata  # noqa: E402


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    """Gzipped IDX files of a tiny Fashion-MNIST look-alike (10 classes)."""
    return tinydata.write_idx_dir(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory, tiny_idx_dir) -> Path:
    """Run every committed notebook once on the `smoke` profile; returns runs/<root>/smoke.

    Tests of individual notebooks read the metrics this one pipeline run writes, so the
    suite executes each notebook once.
    """
    from vitprune.study import pipeline

    runs_root = tmp_path_factory.mktemp("runs")
    pipeline.run_profile("smoke", overrides={"idx_dir": str(tiny_idx_dir)}, runs_root=str(runs_root), study=True)
    return runs_root / "smoke"


def smoke_run(smoke_runs: Path, notebook: str, point: str | None = None, **values) -> Path:
    """The smoke pipeline's run folder of `notebook` at seed 0 and the given sweep values (or the
    named point `point`: "control", "linear_0.4")."""
    from vitprune.study import run_folders

    return run_folders.point_run_dir(smoke_runs.parent, "smoke", notebook, {"seed": 0, **values}, point)
