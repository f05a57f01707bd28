"""Notebook 04 on the smoke profile: both combination orders and the training-free rows."""

import torch

from conftest import smoke_run
from vitprune import models
from vitprune.study import config, results


def _metrics(smoke_runs):
    return results.read_metrics(smoke_run(smoke_runs, "04_combination"))


def test_rows_for_both_orders_and_training_free(smoke_runs):
    m = _metrics(smoke_runs)
    methods = [r["method"] for r in m["rows"]]
    assert "token_then_block" in methods and "block_then_token" in methods
    free = [r for r in m["rows"] if r["method"] == "training_free"]
    assert len(free) == len(config.profile_params("smoke", "04_combination")["training_free_rates"])
    assert m["method"] == "token_then_block"  # order "both": the first order is the main row
    for r in m["rows"]:
        assert r["flops"] == 2 * r["macs"] and r["params"] > 0 and 0 <= r["top1"] <= r["top5"] <= 100
    # training-free: fewer tokens, fewer MACs at a lower rate, the baseline's parameters
    free.sort(key=lambda r: r["base_rate"])
    assert [r["macs"] for r in free] == sorted(r["macs"] for r in free)
    assert all(r["params"] == m["baseline_params"] and r["macs"] < m["baseline_macs"] for r in free)


def test_merging_rows_at_the_training_free_macs(smoke_runs):
    m = _metrics(smoke_runs)
    free = {r["base_rate"]: r for r in m["rows"] if r["method"] == "training_free"}
    tome = [r for r in m["rows"] if r["method"] == "merging"]
    assert [r["matched_rate"] for r in tome] == config.profile_params("smoke", "04_combination")["merging_rates"]
    for r in tome:
        target = free[r["matched_rate"]]["macs"]
        assert r["matched_macs"] == target and abs(r["macs"] - target) / target < 0.05
        assert r["params"] == m["baseline_params"] and "checkpoint" not in r and sum(r["merge_r"]) > 0


def test_combined_rows_cost_less_than_baseline_and_single_methods(smoke_runs):
    m = _metrics(smoke_runs)
    base = results.read_metrics(smoke_runs / "01_deit_baseline")
    token = results.read_metrics(smoke_run(smoke_runs, "02_token_pruning", base_rate=m["base_rate"]))
    block = results.read_metrics(smoke_run(smoke_runs, "03_block_pruning"))
    rows = {r["method"]: r for r in m["rows"] if r["method"] not in ("training_free", "merging")}
    for r in rows.values():
        assert r["macs"] < base["macs"]
    assert rows["token_then_block"]["macs"] < token["macs"]
    assert rows["block_then_token"]["macs"] < block["macs"]
    assert rows["token_then_block"]["params"] < token["params"]


def test_combined_models_reload(smoke_runs):
    m = _metrics(smoke_runs)
    run = smoke_run(smoke_runs, "04_combination")
    x = torch.randn(2, 3, m["img_size"], m["img_size"])
    for r in m["rows"]:
        if r["method"] in ("training_free", "merging"):  # untrained: nothing saved
            continue
        model = models.load_checkpoint(run / r["checkpoint"])
        assert model.vitprune_block_spec == r["block_spec"]
        assert model.vitprune_token_pruning["base_rate"] == r["base_rate"]
        with torch.no_grad():
            assert model(x).shape == (2, len(base_classes(smoke_runs)))
    assert (run / "model.pt").is_file()
    assert models.load_checkpoint(run / "model.pt").vitprune_block_spec == m["block_spec"]


def base_classes(smoke_runs):
    return results.read_metrics(smoke_runs / "00_data_cache")["class_names"]
