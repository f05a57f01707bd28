"""Which saved models notebook 05 times for edge latency, and the table it writes."""

import pytest

from vitprune.errors import UserError
from vitprune.study import edge_latency


def _run(tmp_path, name, method, macs, saved=True, checkpoint=None):
    run_dir = tmp_path / name.split("#")[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    if saved:
        (run_dir / (checkpoint or "model.pt")).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / (checkpoint or "model.pt")).write_bytes(b"x")
    metrics = {"method": method, "macs": macs, **({"checkpoint": checkpoint} if checkpoint else {})}
    return {"run": name, "run_dir": str(run_dir), "metrics": metrics}


def test_pick_runs_takes_per_method_the_saved_model_nearest_the_mac_ratio(tmp_path):
    runs = [_run(tmp_path, "01", "baseline", 300),
            _run(tmp_path, "02/a", "dynamicvit", 270), _run(tmp_path, "02/b", "dynamicvit", 200),
            _run(tmp_path, "03/a", "block", 150), _run(tmp_path, "03/b", "block", 100),
            _run(tmp_path, "04#0", "token_then_block", 90, checkpoint="ttb/model.pt"),
            _run(tmp_path, "04#1", "training_free", 210, saved=False)]  # a row without a model of its own
    base, chosen = edge_latency.pick_runs(runs, target_mac_ratio=1.5)
    assert base["run"] == "01"
    # 300/200 = 1.5x beats 1.11x; 300/150 = 2x is nearer 1.5x than 3x; the training-free row has no model
    assert sorted(r["run"] for r in chosen) == ["02/b", "03/a", "04#0"]
    _, every = edge_latency.pick_runs(runs, target_mac_ratio=0)
    assert sorted(r["run"] for r in every) == ["02/a", "02/b", "03/a", "03/b", "04#0"]


def test_pick_runs_without_a_saved_baseline_names_notebook_01(tmp_path):
    with pytest.raises(UserError, match="01_deit_baseline"):
        edge_latency.pick_runs([_run(tmp_path, "02/a", "dynamicvit", 10)])


def test_markdown_puts_both_runtimes_on_one_line():
    rows = [{"label": "DyViT/0.7", "batch_size": 16, "mac_ratio": 1.5, "onnx_max_abs_diff": 1e-6,
             "runtime": rt, "speedup": s} for rt, s in (("torch", 1.4), ("onnxruntime", 1.6))]
    lines = edge_latency.markdown(rows).splitlines()
    assert lines[2] == "| DyViT/0.7 | 16 | 1.50x | 1.40x | 1.60x | 1.0e-06 |"
    assert "at one precision (fp32)" in lines[-1]
    rows[1]["speedup"] = 1.7  # above 1.1 x the MAC ratio: marked, not reported as a result
    assert edge_latency.markdown(rows).splitlines()[2] == "| DyViT/0.7 | 16 | 1.50x | 1.40x | 1.70x (suspect) | 1.0e-06 |"


def test_a_runs_source_checkpoint_is_not_its_saved_model(tmp_path):
    """01 on ImageNet records the official DeiT file it started from as `checkpoint`; the model
    to time is the run's own model.pt."""
    run = _run(tmp_path, "01", "baseline", 300)
    run["metrics"]["checkpoint"] = str(tmp_path / "deit_base_official.pth")
    assert edge_latency.checkpoint_of(run) == tmp_path / "01" / "model.pt"
