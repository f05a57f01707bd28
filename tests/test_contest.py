"""The contest of `make study`: EViT and ToMe fine-tuned with notebook 02's recipe at DynamicViT's
MACs (`match_macs_of`), read against the plain control they share and against DynamicViT, seed by
seed (`comparisons.matched_contests`)."""

import pytest
import torch
from test_results import _write_run

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import registry
from vitprune.methods.method import PLAIN_CONTROL
from vitprune.models import create_model
from vitprune.study import comparisons, config, results
from vitprune.train import finetune, recipe

PARAMS = {"base_rate": 0.7, "schedule": "geometric", "keep_ratios": [], "locations": [1, 3, 5],
          "allow_empty_stage": False, "keep_prior": True}


def _tiny():
    torch.manual_seed(0)
    return create_model("vit_fmnist", depth=6).eval()


def test_evit_and_tome_take_dynamicvits_macs_and_fine_tune_with_the_recipe_alone():
    base = _tiny()
    match = finetune.match_macs(base, "dynamicvit", PARAMS)
    assert match["matched_label"] == "DynamicViT ρ=0.7" and match["matched_method"] == "dynamicvit"
    for name in ("evit", "merging"):
        model = finetune.prepare(_tiny(), name, PARAMS, **match)
        assert measure.count(model)["macs"] == pytest.approx(match["target_macs"], rel=0.03)
        assert registry.get(name).label_at({**PARAMS, **match}) == \
            {"evit": "EViT", "merging": "ToMe"}[name] + " at DynamicViT ρ=0.7's MACs"
        assert registry.get(name).shared_control == PLAIN_CONTROL  # one plain fine-tune controls both
        data = torch.utils.data.TensorDataset(torch.randn(16, 3, 28, 28), torch.randint(0, 10, (16,)))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        tuned = finetune.finetune(model, name, data, recipe.TrainConfig(epochs=1, batch_size=8, lr=1e-3,
                                                                       progress=False),
                                  params={"backbone_lr_scale": 0.2}, teacher=base)
        plugged = tuned.plugged[name]
        assert (plugged.loss_fn, plugged.on_step) == (None, None)  # the recipe's loss, no phases
        [group] = plugged.param_groups  # notebook 02's recipe: the backbone at lr x backbone_lr_scale
        assert group["lr_scale"] == 0.2 and len(group["params"]) == len(list(model.parameters())) - 2
        changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
        assert changed and not changed & {"cls_token", "pos_embed"}  # fixed, as DynamicViT's recipe keeps them
    assert registry.get("dynamicvit").shared_control is None
    assert registry.get("merging").result_without_training and not registry.get("evit").result_without_training
    with pytest.raises(UserError, match="'dynamicvit' cannot be matched to another method's MACs"):
        finetune.prepare(_tiny(), "dynamicvit", PARAMS, **match)
    with pytest.raises(UserError, match="ToMe merging has no keep rate: .*match_macs_of: dynamicvit"):
        finetune.prepare(_tiny(), "merging", PARAMS)


def test_a_run_is_named_by_its_most_specific_point():
    values = {"base_rate": 0.7, "seed": 0, "control": True}
    assert config.point_named("fmnist", "02_token_pruning", {**values, "method": "evit"}) == PLAIN_CONTROL
    assert config.point_named("fmnist", "02_token_pruning", {**values, "method": "dynamicvit"}) == "control"


def _write(root, name, method, label, macs, top1, seed, **extra):
    _write_run(root / "fmnist" / name, {"method": method, "label": label, "macs": macs, "flops": 2 * macs,
                                        "params": 1, "top1": top1, "seed": seed, **extra})


def test_matched_rows_are_read_against_their_reference_and_their_shared_control(tmp_path):
    _write(tmp_path, "01_deit_baseline", "baseline", "base", 30e6, 92.0, 0)
    matched = {"matched_method": "dynamicvit", "matched_label": "DynamicViT ρ=0.7", "shared_control": PLAIN_CONTROL}
    for seed, (dyvit, ev, tome, plain) in enumerate([(91.0, 90.0, 90.5, 92.0), (91.5, 90.0, 91.5, 92.5),
                                                      (90.5, 89.5, 90.0, 91.0)]):
        _write(tmp_path, f"02_token_pruning/base_rate_0.7__seed_{seed}", "dynamicvit", "DynamicViT ρ=0.7",
               17.5e6, dyvit, seed)
        _write(tmp_path, f"02_token_pruning/evit__seed_{seed}", "evit", "EViT at DynamicViT ρ=0.7's MACs",
               17.4e6, ev, seed, **matched)
        _write(tmp_path, f"02_token_pruning/tome__seed_{seed}", "merging", "ToMe at DynamicViT ρ=0.7's MACs",
               17.6e6, tome, seed, **matched)
        _write(tmp_path, f"02_token_pruning/plain_control__seed_{seed}", "evit", "plain fine-tune control",
               30e6, plain, seed, control=True, shared_control=PLAIN_CONTROL)
    runs = results.collect_runs(tmp_path, "fmnist")
    contests = {c["label"]: c for c in comparisons.matched_contests(runs)}
    assert set(contests) == {"EViT at DynamicViT ρ=0.7's MACs", "ToMe at DynamicViT ρ=0.7's MACs"}
    evit, tome = contests["EViT at DynamicViT ρ=0.7's MACs"], contests["ToMe at DynamicViT ρ=0.7's MACs"]
    assert (evit["n"], evit["mean"], evit["verdict"]) == (3, pytest.approx(1.0 + 0.5 / 3), "better")
    assert (tome["mean"], tome["verdict"]) == (pytest.approx(1 / 3 * (0.5 + 0.0 + 0.5)), "not distinguishable")
    drops = {d["label"]: d for d in comparisons.baseline_drops(runs)}
    # ToMe (method merging) is read against the plain control run under method evit: both share it
    assert drops["ToMe at DynamicViT ρ=0.7's MACs"]["control"]["mean"] == pytest.approx(
        ((90.5 - 92.0) + (91.5 - 92.5) + (90.0 - 91.0)) / 3)
    assert drops["EViT at DynamicViT ρ=0.7's MACs"]["control"]["n"] == 3
    text = comparisons.equal_mac_markdown(comparisons.equal_mac_comparison(runs), list(drops.values()),
                                          list(contests.values()))
    assert "DynamicViT ρ=0.7 (17.50 M MACs, 91.00 ± 0.50 %) against EViT at DynamicViT ρ=0.7's MACs " \
           "(17.40 M MACs, 89.83 ± 0.29 %): 1.17 points above it" in text
    assert "against ToMe at DynamicViT ρ=0.7's MACs (17.60 M MACs, 90.67 ± 0.76 %): not distinguishable" in text


def test_a_row_is_trained_by_its_own_record_not_by_its_method():
    assert results.is_trained({"method": "merging", "history": []})  # ToMe fine-tuned by notebook 02
    assert not results.is_trained({"method": "merging", "history": None})  # notebook 04's comparator
    # the released baseline evaluated by notebook 01 (`trained`: that run did not train it) was trained
    assert results.is_trained({"method": "baseline", "trained": False, "history": []})
