"""A new pruning method is one declaration: a toy token method, defined in tests/toy_method.py and
registered here alone, goes through everything the built-in ones do — apply, count, checkpoint save and load, a
training hand-off, ONNX, the command line's flags, the notebooks' parameter rules, composition
with block pruning, and a Table 1 row and a figure point under its own label and marker."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import vitprune
from vitprune import measure, models, param_rules
from vitprune.cli import main as cli
from vitprune.errors import UserError
from vitprune.deploy import export
from vitprune.methods import registry
from vitprune.study import plots, results, table1
from toy_method import ATTR, METHOD as TOY

@pytest.fixture(autouse=True)
def toy_registered():
    registry.register(TOY)
    yield
    registry.unregister("toy")


def small_vit():
    torch.manual_seed(0)
    return models.create_model("vit_fmnist", depth=4).eval()


def test_apply_count_checkpoint_handoff_and_onnx(tmp_path):
    model = small_vit()
    base_macs = vitprune.count(model)["macs"]  # the public API reaches it by name too
    assert "toy" in vitprune.list_methods()
    model = vitprune.apply(model, "toy", keep=0.5)
    assert registry.attached(model) is TOY and export.model_kind(model) == "toy"
    assert measure.count(model)["macs"] < 0.8 * base_macs
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    loaded = models.load_checkpoint(models.save_checkpoint(tmp_path / "m.pt", model))
    assert registry.method_state(loaded)[ATTR] == {"keep": 0.5, "at": 2}
    with torch.no_grad():
        assert torch.allclose(loaded(x), logits, atol=1e-6)
    # the hand-off between a combination's stages: weights of a training step into a checkpoint
    torch.save(model.state_dict(), tmp_path / "state.pt")
    handed = models.load_checkpoint(models.checkpoint_from_state(model, tmp_path / "state.pt", tmp_path / "h.pt"))
    with torch.no_grad():
        assert torch.allclose(handed(x), logits, atol=1e-6)
    assert vitprune.export_onnx(model, tmp_path / "m.onnx")["check"]["ok"]
    logits2, masks = TOY.kept_token_masks(model, x)
    assert torch.allclose(logits2, logits) and int(masks[0][0].sum()) == 24


def test_composes_with_block_pruning_width_first(tmp_path):
    model = registry.apply_all(small_vit(), {"toy": {"keep": 0.5}, "block": {"keep_heads": 0.5, "keep_mlp": 0.5}})
    assert [m.name for m in registry.applied(model)] == ["block", "toy"]
    assert export.model_kind(model) == "block+toy"
    loaded = models.load_checkpoint(models.save_checkpoint(tmp_path / "m.pt", model))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(UserError, match="toy and dynamicvit both reduce tokens"):
        registry.apply_all(small_vit(), {"toy": {"keep": 0.5}, "dynamicvit": {"base_rate": 0.7}})


def test_measure_bench_and_export_flags(tmp_path, capsys):
    assert cli(["measure", "vit_fmnist", "--toy-keep", "0.5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info[ATTR] == {"keep": 0.5, "at": 2} and info["tokens_per_block"][:3] == [50, 50, 25]
    assert cli(["measure", "vit_fmnist", "--method", "toy", "--toy-keep", "0.5", "--keep-heads", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["block_spec"][0]["heads"] == 2
    assert cli(["measure", "vit_fmnist", "--toy-keep", "0.5", "--base-rate", "0.7"]) == 2
    assert "use one token method at a time" in capsys.readouterr().err
    assert cli(["bench", "vit_fmnist", "--toy-keep", "0.5", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
                "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mac_ratio"] > 1.2
    assert cli(["export", "vit_fmnist", str(tmp_path / "t.onnx"), "--toy-keep", "0.5", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["kind"] == "toy" and written["check"]["ok"]


def test_parameter_rules_know_its_parameters():
    param_rules.check("toy_keep_rates", [0.5, 0.25], "params/x.yaml")
    with pytest.raises(UserError, match="parameter 'toy_keep_rates' must be a list of values in \\(0, 1\\]"):
        param_rules.check("toy_keep_rates", [1.5], "params/x.yaml")


def test_table1_row_and_figure_point_under_its_label_and_marker():
    def run(name, method, macs, top1):
        return {"run": name, "notebook": "04_combination", "run_dir": "/nonexistent",
                "metrics": {"method": method, "label": name, "macs": macs, "params": 1000, "top1": top1}}
    runs = [run("01_deit_baseline", "baseline", 26e6, 91.0), run("04_combination#2", "toy", 17e6, 80.0)]
    df = table1.table1(runs)
    measured = df[df["source"] == table1.MEASURED]
    assert list(measured["method"]) == ["baseline", "toy"]
    assert results.method_rank("toy") < results.method_rank("token_then_block")
    fig = plots.accuracy_vs_macs(runs)
    legend = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert "toy: largest-norm tokens" in legend
    markers = {c.get_label(): c for c in fig.axes[0].collections}
    assert "toy: largest-norm tokens" in markers and "baseline" in markers


def test_a_name_is_registered_once():
    assert registry.register(TOY) is TOY  # the same declaration again (a plugin loaded twice): nothing new
    with pytest.raises(UserError, match="registered already"):
        registry.register(dataclasses.replace(TOY, label="another toy"))


def test_validating_a_plugin_leaves_nothing_registered(tmp_path):
    """The pipeline checks parameters that name a plugin's method with the plugin registered, then
    unregisters it: only the kernels, which load it again, keep it."""
    from vitprune.study import config

    declared = config.declared_parameters("04_combination")
    registry.unregister("toy")
    values = config.validate(declared, {"plugins": ["tests/toy_method.py"], "comparators": ["toy"]}, "test")
    assert values["comparators"] == ["toy"] and "toy" not in registry.METHODS
    with pytest.raises(UserError, match="parameter 'comparators' must be a list of registered token methods"):
        config.validate(declared, {"comparators": ["toy"]}, "test")
    with pytest.raises(UserError, match="plugin 'tests/nope.py' cannot be imported"):
        config.validate(declared, {"plugins": ["tests/nope.py"]}, "test")


def test_a_plugin_reaches_table1_through_the_smoke_profile_alone(smoke_runs):
    """params/smoke names tests/toy_method.py as a plugin of notebooks 04 and 05 and lists the toy
    among 04's comparators: no notebook names it, yet its rows are in Table 1 under its label and
    in the accuracy-vs-MACs figure's runs."""
    import pandas as pd

    table = pd.read_csv(smoke_runs / "05_analysis" / "figures" / "table1.csv")
    toy = table[table["method"] == "toy"]
    assert list(toy["model"]) == ["toy: largest-norm tokens ρ=0.5, no training"]
    assert (toy["n_seeds"] == 0).all()  # no training: the same at every seed
    runs = results.collect_runs(smoke_runs.parent, "smoke", seeds=[0])
    assert sum(r["metrics"].get("method") == "toy" for r in runs) == 1
    legend = {t.get_text() for t in plots.accuracy_vs_macs(runs).axes[0].get_legend().get_texts()}
    assert "toy: largest-norm tokens" in legend
