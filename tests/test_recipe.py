"""engine.train's timm recipe pieces in one process: gradient accumulation equals the larger
batch, Mixup/CutMix train on soft targets, ModelEmaV3 leaves the averaged weights, and bad
settings are one clear error."""

import copy

import pytest
import timm
import torch

import engine_data
from vitprune.errors import UserError
from vitprune.train import engine, recipe
from vitprune.train.recipe import TrainConfig

COMMON = TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_epochs=0.5, seed=0, progress=False, trace_every=0)


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, embed_dim=32, depth=2,
                             num_heads=2, num_classes=10)


@pytest.fixture(scope="module")
def sets():
    return engine_data.tensor_sets(train_per_class=8, eval_per_class=5)


def test_gradient_accumulation_matches_the_larger_batch(sets):
    train_set, _ = sets
    big, accum = tiny_vit(), tiny_vit()
    h_big = engine.train(big, train_set, COMMON)
    h_acc = engine.train(accum, train_set, COMMON.replace(batch_size=8, grad_accum_steps=2))
    assert h_acc[0]["steps_per_epoch"] == h_big[0]["steps_per_epoch"] == 5
    assert h_acc[0]["global_batch"] == 16
    for a, b in zip(h_big, h_acc):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    for (name, p), q in zip(big.state_dict().items(), accum.state_dict().values()):
        assert float((p - q).norm()) <= 0.05 * float(p.norm()) + 1e-6, name


def test_mixup_cutmix_and_ema(sets):
    train_set, eval_set = sets
    plain, mixed = tiny_vit(), tiny_vit()
    engine.train(plain, train_set, COMMON)
    hist = engine.train(mixed, train_set, COMMON.replace(mixup_alpha=0.8, cutmix_alpha=1.0, model_ema_decay=0.9),
                        eval_set)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist) and "eval_top1" in hist[-1]
    # soft targets reach the loss: the mixed run's loss differs from the plain one
    assert not any(torch.equal(p, q) for p, q in zip(plain.parameters(), mixed.parameters()))
    # EMA: with decay 0.9 over 10 steps the result is not the last raw weights of an identical run
    raw = tiny_vit()
    engine.train(raw, train_set, COMMON.replace(mixup_alpha=0.8, cutmix_alpha=1.0))
    assert any(not torch.allclose(p, q) for p, q in zip(raw.parameters(), mixed.parameters()))


def test_recipe_errors(sets):
    train_set, _ = sets
    with pytest.raises(UserError, match="batch_size must be even"):
        engine.train(tiny_vit(), train_set, COMMON.replace(batch_size=15, mixup_alpha=0.8))
    with pytest.raises(UserError, match="model_ema_decay must be in"):
        engine.train(tiny_vit(), train_set, COMMON.replace(model_ema_decay=1.0))
    with pytest.raises(UserError, match="grad_accum_steps must be >= 1"):
        engine.train(tiny_vit(), train_set, COMMON.replace(grad_accum_steps=0))
    with pytest.raises(UserError, match="mixed_precision must be one of"):
        engine.train(tiny_vit(), train_set, COMMON.replace(mixed_precision="fp8"))


def test_soft_target_loss_is_timms():
    logits = torch.randn(4, 10)
    hard = torch.tensor([1, 2, 3, 4])
    soft = torch.nn.functional.one_hot(hard, 10).float()
    assert recipe.classification_loss(logits, soft).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, hard).item(), rel=1e-6)
    assert torch.equal(recipe.hard_labels(soft), hard)
