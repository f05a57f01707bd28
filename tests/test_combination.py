"""Notebook 04 on the smoke profile: both combination orders and the training-free comparators' rows."""

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
    assert len(free) == len(config.profile_params("smoke", "04_combination")["comparator_rates"])
    assert m["method"] == "token_then_block"  # order "both": the first order is the main row
    for r in m["rows"]:
        assert r["flops"] == 2 * r["macs"] and r["params"] > 0 and 0 <= r["top1"] <= r["top5"] <= 100
    # training-free: fewer tokens, fewer MACs, the baseline's parameters
    assert all(r["params"] == m["baseline_params"] and r["macs"] < m["baseline_macs"] for r in free)


def test_merging_rows_at_the_training_free_macs(smoke_runs):
    """The comparators come from the registry in the order listed: ToMe has no keep rate, so at each
    rate it is matched to the MACs of the first comparator's (CLS-attention top-k) row."""
    m = _metrics(smoke_runs)
    free = {r["base_rate"]: r for r in m["rows"] if r["method"] == "training_free"}
    tome = [r for r in m["rows"] if r["method"] == "merging"]
    assert [r["matched_rate"] for r in tome] == config.profile_params("smoke", "04_combination")["comparator_rates"]
    assert [r["method"] for r in m["rows"] if not r.get("stage_budgets")] == ["training_free", "merging", "toy"]
    for r in tome:
        target = free[r["matched_rate"]]["macs"]
        assert r["matched_macs"] == target and abs(r["macs"] - target) / target < 0.05
        assert r["params"] == m["baseline_params"] and "checkpoint" not in r and sum(r["r"]) > 0
        assert "base_rate" not in r  # not a point of the rate sweep


def test_combined_rows_cost_less_than_baseline_and_single_methods(smoke_runs):
    m = _metrics(smoke_runs)
    base = results.read_metrics(smoke_runs / "01_deit_baseline")
    token = results.read_metrics(smoke_run(smoke_runs, "02_token_pruning", base_rate=m["base_rate"]))
    block = results.read_metrics(smoke_run(smoke_runs, "03_block_pruning"))
    rows = {r["method"]: r for r in m["rows"] if r.get("stage_budgets")}  # the two trained orders
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
        if not r.get("stage_budgets"):  # the comparators: untrained, nothing saved
            assert "checkpoint" not in r
            continue
        model = models.load_checkpoint(run / r["checkpoint"])
        assert model.vitprune_block_spec == r["block_spec"]
        assert model.vitprune_dynamicvit["base_rate"] == r["base_rate"]
        with torch.no_grad():
            assert model(x).shape == (2, len(base_classes(smoke_runs)))
    assert (run / "model.pt").is_file()
    assert models.load_checkpoint(run / "model.pt").vitprune_block_spec == m["block_spec"]


def base_classes(smoke_runs):
    return results.read_metrics(smoke_runs / "00_data_cache")["class_names"]


def test_controls_prune_nothing_and_continue_the_controls(smoke_runs):
    """The controls (sweep.yaml's points, study.yaml's for 04) run each recipe with nothing pruned:
    DynamicViT keeps every token, block pruning every head and channel, and 04's control continues
    02's and 03's controls from their hand-offs without pruning in either stage."""
    base = results.read_metrics(smoke_runs / "01_deit_baseline")
    token = results.read_metrics(smoke_run(smoke_runs, "02_token_pruning", point="control"))
    assert token["control"] and token["base_rate"] == 1.0 and token["label"].endswith("control (nothing pruned)")
    assert token["keep_counts"] == [token["tokens_per_block"][0] - 1] * 3  # every patch token, CLS not counted
    assert token["macs"] == base["macs"]  # no token dropped: the gathered forward skips a stage that keeps all
    block = results.read_metrics(smoke_run(smoke_runs, "03_block_pruning", point="control"))
    assert block["control"] and block["macs"] == base["macs"] and block["params"] == base["params"]
    assert block["block_spec"] == [{"heads": h, "mlp": m} for h, m in zip(block["baseline_heads"], block["baseline_mlp"])]
    combo = results.read_metrics(smoke_run(smoke_runs, "04_combination", point="control"))
    rows = {r["method"]: r for r in combo["rows"]}
    assert set(rows) == {"token_then_block", "block_then_token"} and all(r["control"] for r in rows.values())
    run = smoke_run(smoke_runs, "04_combination", point="control")
    assert rows["token_then_block"]["source_run"] == str(smoke_run(smoke_runs, "02_token_pruning", point="control")
                                                        / "handoff.pt")
    assert rows["token_then_block"]["params"] == token["params"] and rows["block_then_token"]["macs"] >= base["macs"]
    assert (run / "model.pt").is_file()


def test_the_studys_linear_rate_keeps_no_token_after_its_last_stage(smoke_runs):
    """study.yaml's linear 0.4 (the study's text: keep 0.4, 0.2, 0.0): block 9 on sees CLS alone."""
    m = results.read_metrics(smoke_run(smoke_runs, "02_token_pruning", point="linear_0.4"))
    assert m["schedule"] == "linear" and m["keep_counts"][-1] == 0 and m["tokens_per_block"][-1] == 1
    assert m["label"].endswith(", linear schedule")
