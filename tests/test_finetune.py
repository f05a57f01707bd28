"""One fine-tune path for every method (`vitprune.train.finetune`): a method declares what its
fine-tune needs (`Method.training`) and `prepare` / `finetune` build it, for a method registered
outside vitprune as for the built-in ones; several methods in one fine-tune chain their step hooks."""

import dataclasses

import pytest
import torch

from engine_data import tensor_sets
from toy_method import METHOD as TOY
from vitprune import models
from vitprune.errors import UserError
from vitprune.methods import block_masks, dynamicvit, registry
from vitprune.methods.method import FineTune, Training
from vitprune.train import finetune
from vitprune.train.recipe import TrainConfig

CONFIG = TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=0, progress=False, distill_weight=0.5)


class Counting:
    """A step hook that counts its calls (its plain attributes come back from workers)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, step, total_steps, model):
        self.calls += 1


def _plug(model, epochs, fresh, *, toy_scale: float = 1.0):
    return FineTune(on_step=Counting(), teacher="logits", summary=f"the backbone on the kept tokens (scale {toy_scale})")


TUNED_TOY = dataclasses.replace(TOY, name="toy_tuned", label="toy, fine-tuned",
                                training=Training(settings=("toy_scale",), plug=_plug))


@pytest.fixture(autouse=True)
def toy_registered():
    registry.register(TUNED_TOY)
    yield
    registry.unregister(TUNED_TOY.name)


def tiny_vit():
    torch.manual_seed(0)
    return models.create_model("vit_fmnist", embed_dim=32, depth=4, num_heads=2, stem_chans=[8, 16]).eval()


def test_a_plugged_in_method_is_prepared_and_fine_tuned_with_its_declaration(capsys):
    train_set, _ = tensor_sets(train_per_class=4)
    teacher = tiny_vit()
    student = finetune.prepare(tiny_vit(), "toy_tuned", {"base_rate": 0.5, "unused": 1})
    assert registry.attached(student) is TUNED_TOY and student.toy_norm_keep == {"keep": 0.5, "at": 2}
    before = [p.detach().clone() for p in student.parameters()]
    tuned = finetune.finetune(student, "toy_tuned", train_set, CONFIG, params={"toy_scale": 2.0, "lr": 9.0},
                              teacher=teacher)
    assert tuned.budget["steps"] == len(train_set) // 16 == tuned.plugged["toy_tuned"].on_step.calls
    assert tuned.settings == {"toy_tuned": {"toy_scale": 2.0}}  # only what the method reads
    assert "toy_tuned: the backbone on the kept tokens (scale 2.0)" in capsys.readouterr().out
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert str(tuned).startswith("fine-tuned in ") and "images seen" in str(tuned)
    assert finetune.finetune(student, "toy_tuned", train_set, CONFIG.replace(epochs=0)).budget is None


def test_a_width_and_a_token_method_in_one_fine_tune_chain_their_step_hooks():
    train_set, _ = tensor_sets(train_per_class=4)
    model = finetune.prepare(tiny_vit(), "toy_tuned", {"base_rate": 0.5})
    tuned = finetune.finetune(model, ["toy_tuned", "block"], train_set, CONFIG, params={"keep_heads": 0.5},
                              teacher=tiny_vit(), keep_mlp=0.5, prune_end=0.5)
    pruner = tuned.plugged["block"].on_step
    assert list(tuned.plugged) == ["block", "toy_tuned"]  # width methods first, as they apply
    assert pruner.log and tuned.plugged["toy_tuned"].on_step.calls == tuned.budget["steps"]
    assert block_masks.has_masks(model)


def test_a_method_that_does_not_train_and_two_losses_say_so_in_one_line():
    train_set, _ = tensor_sets(train_per_class=2)
    with pytest.raises(UserError, match="'training_free' is evaluated as applied .* fine-tune: block, dynamicvit"):
        finetune.finetune(tiny_vit(), "training_free", train_set, CONFIG)
    lossy = dataclasses.replace(TUNED_TOY, name="toy_lossy", training=Training(
        settings=(), plug=lambda model, epochs, fresh: FineTune(loss_fn=lambda *a: None)))
    registry.register(lossy)
    try:
        with pytest.raises(UserError, match="both bring a loss_fn"):
            finetune.finetune(dynamicvit.attach(tiny_vit(), 0.7, locations=(1, 2, 3)), ["toy_lossy", "dynamicvit"], train_set, CONFIG)
    finally:
        registry.unregister("toy_lossy")


def test_dynamicvit_frozen_phase_is_a_fraction_of_the_steps_the_loop_counts():
    """frozen_epochs / epochs of the steps engine.train counts (on N processes, 1/N as many steps)."""
    model = dynamicvit.attach(tiny_vit(), 0.7, locations=(1, 2, 3))
    plugged = dynamicvit.METHOD.training.plug(model, 2, True, frozen_epochs=0.5, backbone_decisions="topk")
    dropped = []
    for step in range(8):
        for p in dynamicvit.backbone_parameters(model):
            p.grad = torch.ones_like(p)
        plugged.on_step(step, 8, model)
        dropped.append(all(p.grad is None for p in dynamicvit.backbone_parameters(model)))
    assert dropped == [True, True, False, False, False, False, False, False]  # 0.5 / 2 epochs of 8 steps
    assert model._tp_decision == "topk" and plugged.teacher == "tokens" and plugged.on_step.leaves_unused_parameters


def test_dynamicvit_continued_with_topk_and_no_frozen_phase_keeps_its_predictors():
    """A combination's second stage: trained predictors keep their choice, the backbone adapts."""
    model = dynamicvit.attach(tiny_vit(), 0.7, locations=(1, 2, 3))
    plugged = dynamicvit.METHOD.training.plug(model, 1, False, frozen_epochs=0.0, backbone_decisions="topk")
    assert plugged.on_step is None and model._tp_decision == "topk"
    assert not any(p.requires_grad for p in dynamicvit.predictor_parameters(model))
    with pytest.raises(UserError, match="set frozen_epochs > 0"):  # fresh predictors would never learn
        dynamicvit.METHOD.training.plug(dynamicvit.attach(tiny_vit(), 0.7, locations=(1, 2, 3)), 1, True, frozen_epochs=0.0,
                                        backbone_decisions="topk")
