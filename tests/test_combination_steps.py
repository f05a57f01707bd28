"""study.combination: the metrics row of one finished model and its checkpoint, the second stage's
training set, the main row."""

import pytest
import torch
from torch.utils.data import TensorDataset

from vitprune import measure, models
from vitprune.study import combination


def _small():
    torch.manual_seed(0)
    return models.create_model("vit_fmnist", stem_chans=[16, 32, 48], embed_dim=32, depth=2, num_heads=2)


def test_finish_model_row_and_checkpoint(tmp_path):
    model = _small()
    x, y = torch.randn(12, 3, 28, 28), torch.arange(12) % 10
    eval_set = TensorDataset(x, y)
    names = [f"c{i}" for i in range(10)]
    baseline_macs = 3 * measure.count(model)["macs"]
    row = combination.finish_model(model.train(), "block", "Block-X", eval_set=eval_set, eval_batch_size=5,
                            class_names=names, model_name="vit_fmnist", img_size=28, baseline_macs=baseline_macs,
                            history=[{"epoch": 0}], train_wall_time_s=1.5, run_dir=tmp_path, base_rate=0.7)
    assert not model.training
    with torch.no_grad():
        expected = 100.0 * float((model(x).argmax(-1) == y).float().mean())
    assert row["top1"] == pytest.approx(expected) and row["eval_samples"] == 12
    assert row["flops"] == 2 * row["macs"] and row["mac_ratio"] == pytest.approx(3.0)
    assert row["method"] == "block" and row["base_rate"] == 0.7 and row["train_wall_time_s"] == 1.5
    assert row["checkpoint"] == "block/model.pt"
    again = models.load_checkpoint(tmp_path / row["checkpoint"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_untrained_model_is_not_saved_and_extra_keys_cannot_replace_measured_ones(tmp_path):
    model, eval_set = _small(), TensorDataset(torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 3]))
    kwargs = dict(eval_set=eval_set, eval_batch_size=4, class_names=[str(i) for i in range(10)],
                  model_name="vit_fmnist", img_size=28, baseline_macs=1, history=None, train_wall_time_s=0.0,
                  run_dir=tmp_path)
    row = combination.finish_model(model, "training_free", "free", **kwargs)
    assert "checkpoint" not in row and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="macs"):
        combination.finish_model(model, "training_free", "free", macs=0, **kwargs)


class _Splits:
    class_names = [str(i) for i in range(10)]
    train_set = ["the first split's"]


def test_second_stage_trains_on_what_the_first_stage_left(monkeypatch):
    asked = {}

    def prepare(dsd, model, train_per_class, **options):
        asked.update(per_class=train_per_class, **options)
        return type("S", (), {"train_set": ["the rest"]})()

    monkeypatch.setattr(combination.data, "prepare_splits", prepare)
    assert combination.second_stage_set(None, _Splits, None, None, 3) == (["the first split's"], 3)
    assert combination.second_stage_set({"images_left": None}, _Splits, None, None, 3) == (["the first split's"], 3)
    assert combination.second_stage_set({"images_left": 1001}, _Splits, None, None, 3, seed=1) == (["the rest"], 1)
    assert asked == {"per_class": 101, "seed": 1}  # rounded up: steps drop the last partial batch


def test_main_row_is_the_first_trained_one():
    rows = [{"method": "merging", "history": None}, {"method": "block_then_token", "history": []},
            {"method": "token_then_block", "history": []}]  # a comparator (evaluated as applied) first
    assert combination.main_row(rows) is rows[1]
    assert combination.main_row(rows[:1]) is rows[0]
    with pytest.raises(Exception, match="nothing was run"):
        combination.main_row([])
