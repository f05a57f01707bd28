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
