"""Per-run metrics files (`metrics.json` beside each executed notebook)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vitprune.errors import UserError

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
