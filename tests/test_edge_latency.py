"""Which saved models notebook 05 times for edge latency, and the table it writes."""

import pytest

from vitprune.errors import UserError
from vitprune.study import edge_latency


def _run(tmp_path, name, method, macs, saved=True, checkpoint=None, label=None):
    run_dir = tmp_path / name.split("#")[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    if saved:
        (run_dir / (checkpoint or "model.pt")).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / (checkpoint or "model.pt")).write_bytes(b"x")
    metrics = {"method": method, "macs": macs, "label": label or name, **({"checkpoint": checkpoint} if checkpoint else {})}
    return {"run": name, "run_dir": str(run_dir), "metrics": metrics}


def test_pick_runs_takes_per_method_the_configuration_nearest_the_mac_ratio_with_every_seed(tmp_path):
    runs = [_run(tmp_path, "01", "baseline", 300),
            _run(tmp_path, "02/a", "dynamicvit", 270), _run(tmp_path, "02/b", "dynamicvit", 200, label="b"),
            _run(tmp_path, "02/b1", "dynamicvit", 200, label="b"),  # b's second seed: timed on its own
            _run(tmp_path, "03/a", "block", 150), _run(tmp_path, "03/b", "block", 100),
            _run(tmp_path, "04#0", "token_then_block", 90, checkpoint="ttb/model.pt"),
            _run(tmp_path, "04#1", "training_free", 210, saved=False)]  # a row without a model of its own
    base, chosen = edge_latency.pick_runs(runs, target_mac_ratio=1.5)
    assert base["run"] == "01"
    # 300/200 = 1.5x beats 1.11x; 300/150 = 2x is nearer 1.5x than 3x; the training-free row has no model
    assert sorted(r["run"] for r in chosen) == ["02/b", "02/b1", "03/a", "04#0"]
    _, every = edge_latency.pick_runs(runs, target_mac_ratio=0)
    assert sorted(r["run"] for r in every) == ["02/a", "02/b", "02/b1", "03/a", "03/b", "04#0"]


def test_pick_runs_without_a_saved_baseline_names_notebook_01(tmp_path):
    with pytest.raises(UserError, match="01_deit_baseline"):
        edge_latency.pick_runs([_run(tmp_path, "02/a", "dynamicvit", 10)])


def _timing(label, runtime, precision, speedup, seed=0, method="dynamicvit", mac_ratio=1.5):
    return {"label": label, "method": method, "seed": seed, "batch_size": 16, "mac_ratio": mac_ratio,
            "runtime": runtime, "precision": precision, "speedup": speedup}


def test_markdown_folds_the_seeds_into_a_median_and_a_spread():
    rows = [_timing("DyViT/0.7", "torch", "fp32", s, seed) for seed, s in enumerate((1.3, 1.4, 1.5))]
    rows += [_timing("DyViT/0.7", "onnxruntime", p, s) for p, s in (("fp32", 1.45), ("int8", 1.7))]
    result = {"rows": rows, "accuracy": [], "threads": 2, "repeats": 15, "statistic": "median of ratios"}
    lines = edge_latency.markdown(result).splitlines()
    # torch: median 1.40 over 3 seeds, spread (1.5 - 1.3) / 1.4; fp32 above 1.1 x 1.5 is suspect, int8 is not held to it
    assert lines[2] == "| DyViT/0.7 | 16 | 1.50x | 1.40x | 1.45x | 1.70x | 3 | 14.3 % |"
    rows[3]["speedup"] = 1.7
    assert "| 1.70x (suspect) | 1.70x |" in edge_latency.markdown(result).splitlines()[2]
    assert "2 thread(s), 15 interleaved rounds" in lines[4] and "median of ratios" in lines[4]


def test_accuracy_table_says_where_int8_costs_more_than_on_the_baseline():
    def acc(label, method, fp32, int8, seed=0, differing=0):
        return {"label": label, "method": method, "seed": seed, "images": 100, "torch_top1": fp32,
                "onnxruntime_top1": fp32, "int8_top1": int8, "differing_predictions": differing}
    accuracy = [acc("base", "baseline", 90.0, 89.9), acc("dyvit", "dynamicvit", 88.0, 87.5),
                acc("dyvit", "dynamicvit", 89.0, 88.5, seed=1, differing=1), acc("block", "block", 87.0, 86.95)]
    lines = edge_latency.accuracy_markdown(accuracy)
    assert lines[2] == "| base | 1 | 100 | 90.00 | 90.00 | 89.90 | -0.10 | 0 |"
    assert lines[3] == "| dyvit | 2 | 100 | 88.50 | 88.50 | 88.00 | -0.50 | 1 |"
    assert "changes the baseline's top-1 by -0.10 points" in lines[6] and lines[6].endswith("in: dyvit.")


def test_a_runs_source_checkpoint_is_not_its_saved_model(tmp_path):
    """01 on ImageNet records the official DeiT file it started from as `checkpoint`; the model
    to time is the run's own model.pt."""
    run = _run(tmp_path, "01", "baseline", 300)
    run["metrics"]["checkpoint"] = str(tmp_path / "deit_base_official.pth")
    assert edge_latency.checkpoint_of(run) == tmp_path / "01" / "model.pt"
