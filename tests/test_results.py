"""Table 1 assembly: values equal the runs' metrics.json, reference rows carry their units."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import smoke_run
from vitprune.errors import UserError
from vitprune.study import comparisons, results, run_folders, table1

ROOT = Path(__file__).resolve().parent.parent


def _history(epochs, start_loss, final_top1, steps=20):
    """engine.train's per-epoch records, with the loss trace every 10 optimizer steps."""
    return [{"epoch": e, "train_loss": start_loss / (e + 1), "eval_top1": final_top1 - 5.0 / (e + 1),
             "trace": [[e * steps + s, start_loss / (e + 1 + s / steps), 1e-3] for s in (10, steps)]}
            for e in range(epochs)]


def _write_run(run_dir: Path, metrics: dict, params: dict | None = None) -> None:
    results.write_metrics(run_dir, metrics)
    manifest = {"status": "ok", "params": params or {}, "variant": run_dir.name, "files": run_folders.run_files(run_dir)}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def write_synthetic_runs(runs_root: Path, profile: str = "fmnist") -> dict[str, dict]:
    """A runs tree shaped like the pipeline's, following the metrics.json contract.

    Returns {run name: metrics} so tests can compare the table against what was written.
    """
    base = runs_root / profile
    written = {}
    depth, heads, mlp = 4, 4, 128

    def add(name, metrics, params=None):
        _write_run(base / name, metrics, params)
        written[name] = metrics

    add("01_deit_baseline", {
        "method": "baseline", "label": "ViT-FMNIST", "model_name": "vit_fmnist", "img_size": 28,
        "params": 612_345, "macs": 31_250_000, "flops": 62_500_000, "top1": 90.25, "top5": 99.75,
        "eval_samples": 10000, "train_wall_time_s": 200.0, "history": _history(3, 1.2, 90.25),
        "block_spec": [{"heads": heads, "mlp": mlp}] * depth})
    for rate, macs, top1, speed in ((0.9, 27_000_000, 89.9, 1.08), (0.7, 21_000_000, 88.75, 1.3),
                                    (0.5, 15_500_000, 85.5, 1.6)):
        counts = [int(49 * rate ** s) for s in (1, 2, 3)]
        tokens = [50, counts[0] + 1, counts[1] + 1, counts[2] + 1]
        add(f"02_token_pruning/base_rate_{rate}", {
            "method": "dynamicvit", "label": f"DyViT-FMNIST/{rate}", "model_name": "vit_fmnist",
            "img_size": 28, "params": 640_000, "macs": macs, "flops": 2 * macs, "top1": top1,
            "top5": 99.5, "eval_samples": 10000, "train_wall_time_s": 60.0, "history": _history(2, 0.9, top1),
            "base_rate": rate, "schedule": "geometric", "keep_ratios": [rate, rate ** 2, rate ** 3],
            "tokens_per_block": tokens, "speedup": speed, "mac_ratio": 31_250_000 / macs,
            "rows": [{"method": "training_free", "label": f"EViT-style/{rate}", "params": 612_345,
                      "macs": macs - 100_000, "flops": 2 * (macs - 100_000), "top1": top1 - 3.0,
                      "top5": 98.0, "base_rate": rate, "tokens_per_block": tokens}]},
            {"base_rate": rate, "epochs": 2})
    spec = [{"heads": 2, "mlp": 64}, {"heads": 3, "mlp": 80}, {"heads": 0, "mlp": 40}, {"heads": 2, "mlp": 96}]
    add("03_block_pruning", {
        "method": "block", "label": "Block-FMNIST", "model_name": "vit_fmnist", "img_size": 28,
        "params": 300_000, "macs": 16_000_000, "flops": 32_000_000, "top1": 87.5, "top5": 99.0,
        "eval_samples": 10000, "train_wall_time_s": 90.0, "history": _history(2, 1.0, 87.5),
        "block_spec": spec, "baseline_heads": heads, "baseline_mlp": mlp, "keep_heads": 0.5,
        "keep_mlp": 0.5, "speedup": 1.7, "mac_ratio": 31_250_000 / 16_000_000})
    for order, macs, top1 in (("token_then_block", 11_000_000, 84.0), ("block_then_token", 10_500_000, 85.25)):
        add(f"04_combination/order_{order}", {
            "method": order, "label": f"{order}-FMNIST", "model_name": "vit_fmnist", "img_size": 28,
            "params": 320_000, "macs": macs, "flops": 2 * macs, "top1": top1, "top5": 98.5,
            "eval_samples": 10000, "train_wall_time_s": 80.0, "history": _history(2, 1.1, top1),
            "block_spec": spec, "base_rate": 0.7, "speedup": 2.1, "mac_ratio": 31_250_000 / macs},
            {"order": order})
    # the data notebook and a failed run are not table rows
    (base / "00_data_cache").mkdir(parents=True)
    results.write_metrics(base / "00_data_cache", {"cache_path": "/x", "class_names": ["a"]})
    failed = base / "04_combination" / "order_broken"
    _write_run(failed, {"method": "block_then_token", "label": "broken", "macs": 1, "params": 1, "top1": 1.0})
    (failed / "manifest.json").write_text(json.dumps({"status": "failed"}))
    # kept-token arrays as the token notebook saves them: images + one mask per stage
    rng = np.random.default_rng(0)
    np.savez(base / "02_token_pruning/base_rate_0.7/kept_tokens.npz",
             images=rng.random((3, 28, 28)).astype(np.float32),
             masks=rng.random((3, 3, 49)) > 0.4)
    token_run = base / "02_token_pruning/base_rate_0.7"  # its manifest records the arrays too
    recorded = json.loads((token_run / "manifest.json").read_text())
    (token_run / "manifest.json").write_text(json.dumps({**recorded, "files": run_folders.run_files(token_run)}))
    return written


@pytest.fixture()
def runs_tree(tmp_path):
    written = write_synthetic_runs(tmp_path / "runs")
    return tmp_path / "runs", written


def test_collect_runs_finds_every_model_run_and_expands_rows(runs_tree):
    root, written = runs_tree
    runs = results.collect_runs(root, "fmnist")
    names = {r["run"] for r in runs}
    assert set(written) <= names
    assert "02_token_pruning/base_rate_0.7#0" in names  # the training-free row
    assert "04_combination/order_broken" not in names  # failed manifest
    # a file rewritten after the pipeline finished (a notebook run by hand into the folder): left out, said why
    (root / "fmnist/03_block_pruning/metrics.json").write_text(json.dumps({"method": "block", "top1": 1.0}))
    left_out = []
    assert "03_block_pruning" not in {r["run"] for r in results.collect_runs(root, "fmnist", left_out=left_out)}
    assert any("metrics.json changed since the pipeline wrote it" in line for line in left_out)
    assert not any(r["notebook"] == "00_data_cache" for r in runs)
    tf = next(r for r in runs if r["run"] == "02_token_pruning/base_rate_0.7#0")
    assert tf["metrics"]["method"] == "training_free" and tf["metrics"]["img_size"] == 28
    combo = next(r for r in runs if r["run"] == "04_combination/order_token_then_block")
    assert combo["command"] == "python -m vitprune run --profile fmnist --only 04_combination -p order=token_then_block"


def test_table1_values_equal_metrics(runs_tree):
    root, written = runs_tree
    df = table1.table1(results.collect_runs(root, "fmnist"))
    ours = df[df["source"] == table1.MEASURED].set_index("run")
    for name, m in written.items():
        row = ours.loc[name]
        assert row["model"] == m["label"] and row["method"] == m["method"]
        assert row["params_M"] == pytest.approx(m["params"] / 1e6)
        assert row["gmacs"] == pytest.approx(m["macs"] / 1e9)
        assert row["gflops"] == pytest.approx(m["flops"] / 1e9)
        assert row["top1"] == pytest.approx(m["top1"])
    base = written["01_deit_baseline"]
    rate = written["02_token_pruning/base_rate_0.7"]
    row = ours.loc["02_token_pruning/base_rate_0.7"]
    assert row["d_top1"] == pytest.approx(rate["top1"] - base["top1"])
    assert row["d_gmacs"] == pytest.approx((rate["macs"] - base["macs"]) / 1e9)
    assert ours.loc["01_deit_baseline", "d_top1"] == 0
    # ordering: baseline first, then DynamicViT from the highest rate down
    methods = list(df[df["source"] == table1.MEASURED]["method"])
    assert methods[0] == "baseline" and methods[1:4] == ["dynamicvit"] * 3
    assert list(ours[ours["method"] == "dynamicvit"]["model"]) == [
        "DyViT-FMNIST/0.9", "DyViT-FMNIST/0.7", "DyViT-FMNIST/0.5"]


def test_reference_rows_present_with_units():
    df = table1.table1([])
    study = df[df["source"] == table1.STUDY].set_index("model")
    paper = df[df["source"] == table1.PAPER].set_index("model")
    assert len(study) == 10 and {"DeiT-B", "EfficientFormer-L1", "DynamicViT-B/0.7"} <= set(paper.index)
    # DeiT's "FLOPs" are MACs: 17.6 printed = 17.6 GMACs = 35.2 GFLOPs
    deit = study.loc["DeiT-Base/16 [13]"]
    assert (deit["printed_G"], deit["printed_unit"], deit["gmacs"]) == (17.6, "GMACs", 17.6)
    assert deit["gflops"] == pytest.approx(35.2)
    # EfficientFormer's were doubled: printed 2.6 "FLOPs" is 1.3 GMACs, the published number
    l1 = study.loc["EfficientFormer-L1 [16]"]
    assert l1["printed_unit"] == "GFLOPs" and l1["gmacs"] == pytest.approx(paper.loc["EfficientFormer-L1", "gmacs"])
    # in one unit, L7 is cheaper than DeiT-B, not 2.8 more
    assert study.loc["EfficientFormer-L7 [16]", "d_gmacs"] == pytest.approx(10.2 - 17.6)
    assert study.loc["DyViT-Sub/0.4", "d_top1"] == pytest.approx(63.1 - 81.8)
    assert math.isnan(paper.loc["DeiT-B", "gmacs"])


def test_write_table1_files(runs_tree, tmp_path):
    root, written = runs_tree
    df = table1.table1(results.collect_runs(root, "fmnist"))
    paths = table1.write_table1(df, tmp_path / "fig")
    md = paths["table1.md"].read_text()
    assert "DyViT-FMNIST/0.7" in md and "EfficientFormer-L7 [16]" in md and "= GFLOPs" in md
    assert "88.75 (-1.50)" in md and "23.0 (-12.2)" in md  # value (change vs baseline)
    import pandas as pd
    back = pd.read_csv(paths["table1.csv"])
    assert back.loc[back["run"] == "03_block_pruning", "top1"].item() == pytest.approx(87.5)
    tex = paths["table1.tex"].read_text()
    assert "\\begin{tabular}" in tex and "DyViT-Sub/0.4" in tex
    # only a control row is marked as one: the study's and paper's rows have no control column
    shown = table1.display_table1(df).set_index("Model")
    assert (shown["Δ control [95 %]"] == "(the control)").sum() == int(df["control"].fillna(False).astype(bool).sum())
    assert shown.loc["DyViT-Sub/0.4", "Δ control [95 %]"] == ""


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="python -m vitprune run --profile smoke"):
        results.require_runs(results.collect_runs(tmp_path, "smoke"), tmp_path, "smoke")


@pytest.mark.slow
def test_table_cli(runs_tree, tmp_path):
    root, _ = runs_tree
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "vitprune", "table", "--profile", "fmnist",
                           "--runs-root", str(root), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Block-FMNIST" in proc.stdout and "DyViT-Sub/0.7" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"table1.md", "table1.csv", "table1.tex"}
    empty = subprocess.run([sys.executable, "-m", "vitprune", "table", "--profile", "fmnist",
                            "--runs-root", str(tmp_path / "nothing"), "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2
    assert empty.stderr.startswith("error: ") and "run --profile fmnist" in empty.stderr


@pytest.mark.notebook
def test_summary_repeating_one_of_its_rows_is_not_a_second_row(tmp_path):
    row = {"method": "token_then_block", "label": "t->b", "params": 1, "macs": 10, "flops": 20, "top1": 80.0}
    other = {**row, "method": "block_then_token", "label": "b->t"}
    _write_run(tmp_path / "fmnist/04_combination", {**row, "rows": [row, other]})
    runs = results.collect_runs(tmp_path, "fmnist")
    assert sorted(r["metrics"]["label"] for r in runs) == ["b->t", "t->b"]


@pytest.mark.notebook
def test_smoke_pipeline_draws_every_figure(smoke_runs):
    """All six notebooks chained on the smoke profile: 05 finds data for every figure,
    including the kept-token grid from notebook 02's saved masks."""
    from vitprune.study import plots

    metrics = results.read_metrics(smoke_runs / "05_analysis")
    assert sorted(metrics["figures"]) == sorted([*plots.FIGURES, "edge_latency"])
    # every saved pruned kind was exported, matched PyTorch in onnxruntime and was timed in both runtimes
    edge = metrics["edge_latency"]["rows"]
    assert {r["method"] for r in edge} >= {"dynamicvit", "block", "token_then_block", "block_then_token"}
    pruned = [r for r in edge if r["method"] != "baseline"]
    assert {(r["run"], r["runtime"], r["precision"]) for r in pruned} == {
        (r["run"], rt, p) for r in pruned for rt, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))}
    assert all(r["onnx_max_abs_diff"] < 1e-3 and r["speedup"] > 0 for r in pruned)
    # every exported file scored on the test images in fp32 and int8, beside PyTorch
    accuracy = metrics["edge_latency"]["accuracy"]
    assert [a["method"] for a in accuracy][0] == "baseline" and {a["run"] for a in accuracy} >= {r["run"] for r in pruned}
    assert all(a["differing_predictions"] == 0 and 0 <= a["int8_top1"] <= 100 for a in accuracy)
    assert all(a["torch_top1"] == a["onnxruntime_top1"] for a in accuracy)
    assert (Path(metrics["figures_dir"]) / "edge_latency.png").stat().st_size > 0
    rows = {row["run"]: row for row in metrics["table1_rows"]}
    for run, folder in (("01_deit_baseline", smoke_runs / "01_deit_baseline"),
                        ("02_token_pruning/base_rate_0.7", smoke_run(smoke_runs, "02_token_pruning", base_rate=0.7)),
                        ("03_block_pruning", smoke_run(smoke_runs, "03_block_pruning"))):
        assert rows[run]["top1"] == pytest.approx(results.read_metrics(folder)["top1"])
    assert metrics["suspect_speedups"] == [] and metrics["seeds"] == [0]
    # every table and figure file, inside the run folder on this profile (never the repo's figures/)
    fig_dir = Path(metrics["figures_dir"])
    assert fig_dir == smoke_runs / "05_analysis" / "figures"
    expected = {"table1.md", "table1.csv", "table1.tex", "audit.md", "equal_macs.md", "edge_latency.md"}
    expected |= {f"{name}.{fmt}" for name in [*plots.FIGURES, "edge_latency"] for fmt in plots.FORMATS}
    assert {Path(f).name for f in metrics["files"]} == expected
    assert all((fig_dir / name).stat().st_size > 0 for name in expected)
    assert [f["id"] for f in metrics["audit"]] == ["units", "schedule", "layer9", "resolution", "scramble"]
    executed = json.loads((smoke_runs / "05_analysis" / "05_analysis.ipynb").read_text())
    images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == len(metrics["figures"])  # every figure shown inline


def test_interpolate_top1_is_linear_inside_the_sweep_and_none_outside():
    sweep = [(20.0, 88.0), (10.0, 80.0), (15.0, 86.0)]
    assert comparisons.interpolate_top1(sweep, 12.5) == pytest.approx(83.0)
    assert comparisons.interpolate_top1(sweep, 15.0) == pytest.approx(86.0)
    assert comparisons.interpolate_top1(sweep, 17.5) == pytest.approx(87.0)
    assert comparisons.interpolate_top1(sweep, 9.0) is None
    assert comparisons.interpolate_top1(sweep, 21.0) is None


def test_equal_mac_comparison_sets_each_row_against_both_sweeps(tmp_path):
    def row(method, label, macs, top1):
        return {"method": method, "label": label, "macs": macs, "flops": 2 * macs, "params": 1, "top1": top1}

    _write_run(tmp_path / "fmnist/01_deit_baseline", row("baseline", "base", 30, 90.0))
    for rate, macs, top1 in ((0.9, 27, 89.0), (0.5, 17, 85.0)):
        _write_run(tmp_path / f"fmnist/02_token_pruning/base_rate_{rate}", row("dynamicvit", f"dyvit {rate}", macs, top1))
    for ratio, macs, top1 in ((1.5, 20, 88.0), (3.0, 10, 80.0)):
        _write_run(tmp_path / f"fmnist/03_block_pruning/target_mac_ratio_{ratio}", row("block", f"block {ratio}", macs, top1))
    _write_run(tmp_path / "fmnist/04_combination", {
        **row("token_then_block", "t->b", 15, 85.0),
        "rows": [row("token_then_block", "t->b", 15, 85.0), row("block_then_token", "b->t", 12, 81.0)]})
    rows = {r["label"]: r for r in comparisons.equal_mac_comparison(results.collect_runs(tmp_path, "fmnist"))}
    assert "base" not in rows
    # t->b at 15 M MACs: block sweep 80 + (88 - 80) * 5 / 10 = 84; DynamicViT's sweep starts at 17 M
    assert rows["t->b"]["block_top1_at_macs"] == pytest.approx(84.0)
    assert rows["t->b"]["dynamicvit_top1_at_macs"] is None
    assert rows["t->b"]["margin"] == pytest.approx(1.0)
    assert rows["b->t"]["margin"] == pytest.approx(81.0 - 81.6)
    # a single-method row is compared with the other method only
    assert rows["dyvit 0.5"]["margin"] == pytest.approx(85.0 - 85.6)
    text = comparisons.equal_mac_markdown(list(rows.values()))
    assert "t->b (85.00 % at 0.00 M MACs, 1 seed(s)): +1.00 points against block pruning (one seed, no interval)" in text
    assert "Pareto-dominates here: no (0 of 2 orders" in text  # one seed: no interval, so no verdict


def test_an_untrained_row_of_one_seed_is_set_against_every_seed(tmp_path):
    """Notebook 04 evaluates the comparators at one seed only (nothing in them trains): the
    equal-MAC comparison still pairs that row with each seed's sweep, as when every seed held it."""
    def row(method, label, macs, top1, seed, **extra):
        return {"method": method, "label": label, "macs": macs, "flops": 2 * macs, "params": 1, "top1": top1,
                "seed": seed, **extra}

    def comparison(free_seeds):
        root = tmp_path / "x".join(map(str, free_seeds))
        _write_run(root / "fmnist/01_deit_baseline", row("baseline", "base", 30, 90.0, 0))
        for seed, (high, low) in {0: (88.0, 80.0), 1: (86.0, 80.0), 2: (90.0, 80.0)}.items():
            for ratio, macs, top1 in ((1.5, 20, high), (3.0, 10, low)):
                _write_run(root / f"fmnist/03_block_pruning/target_mac_ratio_{ratio}__seed_{seed}",
                           row("block", f"block {ratio}", macs, top1, seed))
            t2b = row("token_then_block", "t->b", 15, 85.0, seed)
            free = [row("training_free", "free", 15, 83.0, seed, history=None)] if seed in free_seeds else []
            _write_run(root / f"fmnist/04_combination/seed_{seed}", {**t2b, "rows": [t2b, *free]})
        return {r["label"]: r for r in comparisons.equal_mac_comparison(results.collect_runs(root, "fmnist"))}

    every, once = comparison([0, 1, 2]), comparison([0])
    assert once["free"]["vs"]["block"] == every["free"]["vs"]["block"]
    assert once["free"]["vs"]["block"]["n"] == 3 and once["free"]["vs"]["block"]["mean"] == pytest.approx(-1.0)
    assert once["free"]["margin_interval"] == every["free"]["margin_interval"]


def test_seeded_comparisons_pair_runs_by_seed_with_t_intervals(tmp_path):
    """Three seeds: Table 1 folds them (mean, std, n), comparisons are paired per seed with a t interval."""
    def row(method, label, macs, top1, seed, **extra):
        return {"method": method, "label": label, "macs": macs, "flops": 2 * macs, "params": 1, "top1": top1,
                "seed": seed, **extra}

    _write_run(tmp_path / "fmnist/01_deit_baseline", row("baseline", "base", 30, 90.0, 0))
    block = {0: (88.0, 80.0), 1: (87.0, 81.0), 2: (89.0, 79.0)}  # seed: top-1 at 20 and at 10 M MACs
    combo = {0: 85.0, 1: 86.0, 2: 85.5}  # at 15 M MACs: block interpolates to 84, 84, 84 -> +1, +2, +1.5
    for seed in (0, 1, 2):
        for ratio, macs, top1 in ((1.5, 20, block[seed][0]), (3.0, 10, block[seed][1])):
            _write_run(tmp_path / f"fmnist/03_block_pruning/target_mac_ratio_{ratio}__seed_{seed}",
                       row("block", f"block {ratio}", macs, top1, seed))
        t2b = row("token_then_block", "t->b", 15, combo[seed], seed)
        free = row("training_free", "free", 15, 83.0, seed, history=None)  # evaluated as applied
        _write_run(tmp_path / f"fmnist/04_combination/seed_{seed}", {**t2b, "rows": [t2b, free]})
    runs = results.collect_runs(tmp_path, "fmnist")
    assert len(results.collect_runs(tmp_path, "fmnist", seeds=[0, 2])) == 1 + 2 * 4
    table = table1.table1(runs, include_reference=False).set_index("run")
    assert table.loc["04_combination#0", "top1"] == pytest.approx(85.5)
    assert table.loc["04_combination#0", "top1_std"] == pytest.approx(0.5)
    assert table.loc["04_combination#0", "n_seeds"] == 3 and table.loc["04_combination#1", "n_seeds"] == 0
    assert math.isnan(table.loc["04_combination#1", "top1_std"])  # training-free: no spread to show
    shown = table1.display_table1(table.reset_index()).set_index("Model")
    assert shown.loc["free", "Top-1 (%)"].startswith("83.00") and "±" not in shown.loc["free", "Top-1 (%)"]
    assert shown.loc["t->b", "Top-1 (%)"].startswith("85.50 ± 0.50")
    assert table.loc["03_block_pruning/target_mac_ratio_1.5", "top1"] == pytest.approx(88.0)
    rows = {r["label"]: r for r in comparisons.equal_mac_comparison(runs)}
    vs = rows["t->b"]["vs"]["block"]
    half = 4.302653 * 0.5 / 3 ** 0.5  # t(0.975, 2) x std / sqrt(n) of the differences +1, +2, +1.5
    assert (vs["n"], vs["mean"], vs["at_macs"]) == (3, pytest.approx(1.5), pytest.approx(84.0))
    assert (vs["low"], vs["high"]) == (pytest.approx(1.5 - half, abs=1e-4), pytest.approx(1.5 + half, abs=1e-4))
    assert vs["verdict"] == "better"
    # the training-free row is the same at every seed, the block sweep at its MACs too here: -1 at every seed
    assert rows["free"]["vs"]["block"]["mean"] == pytest.approx(-1.0)
    assert rows["free"]["vs"]["block"]["verdict"] == "worse"
    drops = {d["label"]: d for d in comparisons.baseline_drops(runs)}
    assert "free" not in drops and drops["t->b"]["mean"] == pytest.approx(-4.5) and drops["t->b"]["n"] == 3
    text = comparisons.equal_mac_markdown(list(rows.values()), list(drops.values()))
    assert "t->b (85.50 % at 0.00 M MACs, 3 seed(s)): 1.50 points above block pruning (+1.50 [+0.26, +2.74])" in text
    assert "Pareto-dominates here: yes (1 of 1 orders" in text
