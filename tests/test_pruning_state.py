"""pruning_state and registry.method_state: one accessor for every kind of pruning, and every pruned kind round-trips
through models.save_checkpoint / load_checkpoint with the same logits."""

import pytest
import torch

from vitprune import models
from vitprune.methods import block_masks, block_pruning, dynamicvit, merging, pruning_state, registry, training_free

LOCS = (1, 2, 3)


def _base():
    torch.manual_seed(0)
    return models.create_model("vit_fmnist", depth=4)


def _masked(model):
    heads = [torch.tensor([i != b % 4 for i in range(4)]) for b in range(4)]  # one head closed per block
    mlp = [torch.arange(128) % 3 != b % 3 for b in range(4)]  # a third of the channels closed
    mlp[2] = torch.zeros(128, dtype=torch.bool)  # one whole MLP branch closed
    block_masks.set_masks(model, heads, mlp)
    return model


def _removed(model):
    return block_pruning.prune_to(model, keep_heads=0.5, keep_mlp=0.4)


def _token(model):
    return dynamicvit.attach(model, base_rate=0.6, locations=LOCS)


def _free(model):
    return training_free.apply(model, base_rate=0.6, locations=LOCS)


def _merge(model):
    return merging.apply(model, r=2)


KINDS = {
    "baseline": [],
    "dynamicvit": [_token],
    "block_masked": [_masked],
    "block_removed": [_removed],
    "training_free": [_free],
    "block_removed+dynamicvit": [_removed, _token],
    "block_masked+dynamicvit": [_masked, _token],
    "block_removed+training_free": [_removed, _free],
    "merging": [_merge],
    "block_removed+merging": [_removed, _merge],
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_pruned_kind_round_trips_with_equal_logits(kind, tmp_path):
    model = _base()
    for step in KINDS[kind]:
        model = step(model)
    model.eval()
    state = registry.method_state(model)
    assert registry.is_pruned(model) == (kind != "baseline")
    path = models.save_checkpoint(tmp_path / "m.pt", model)
    loaded = models.load_checkpoint(path)
    assert registry.method_state(loaded) == state
    assert type(loaded).__name__ == type(model).__name__
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.allclose(expected, got, atol=1e-6), (expected - got).abs().max()
    if kind != "baseline":  # the pruning really acts: the unpruned base gives other logits
        with torch.no_grad():
            assert not torch.allclose(_base().eval()(x), got, atol=1e-4)


def test_method_state_reads_what_the_pruners_write():
    model = _base()
    assert registry.method_state(model) == {"block_spec": None, "block_masks": False,
                                             "dynamicvit": None, "training_free": None, "merging": None,
                                             "evit": None}
    _masked(model)
    assert block_masks.has_masks(model) and registry.method_state(model)["block_masks"]
    block_pruning.remove(model)
    assert not block_masks.has_masks(model)
    assert pruning_state.block_spec(model) == block_masks.block_spec(model) == model.vitprune_block_spec
    _free(model)
    assert pruning_state.training_free(model) == training_free.config(model)
    assert pruning_state.dynamicvit(model) is None
    wrapped = torch.nn.DataParallel(model)  # read through a wrapper
    assert registry.method_state(wrapped) == registry.method_state(model)


def test_old_checkpoint_without_new_keys_still_loads(tmp_path):
    """Files written before "block_masks" / "training_free" were stored, and before DynamicViT had
    one name (its state under "token_pruning"), load as before."""
    model = _token(_base()).eval()
    path = models.save_checkpoint(tmp_path / "m.pt", model)
    raw = torch.load(path, weights_only=True)
    del raw["block_masks"], raw["training_free"], raw["merging"]
    raw["token_pruning"] = raw.pop("dynamicvit")
    torch.save(raw, path)
    assert registry.method_state(models.load_checkpoint(path))["dynamicvit"] == raw["token_pruning"]
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), models.load_checkpoint(path)(x), atol=1e-6)
