"""Every registered token method (vitprune.methods.registry) through the same steps: apply ->
count -> save and reload -> ONNX export checked in onnxruntime -> kept-token masks. A built-in
method registered there is tested here once its options are added to OPTIONS."""

import pytest
import torch

from vitprune import measure, models
from vitprune.deploy import export
from vitprune.methods import evit, merging, registry
from test_export import _spread  # spread weights: random-init predictor scores nearly tie, top-k could pick either

OPTIONS = {"dynamicvit": {"base_rate": 0.7}, "training_free": {"base_rate": 0.7}, "merging": {"r": 4},
           "evit": {"keep_rate": 0.7}}
PATCHES = 64  # 32 x 32 images, patch 4


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=12,
                               num_heads=2, num_classes=10).eval()


def test_every_token_method_is_registered_with_options_here():
    assert {m.name for m in registry.token_methods()} == set(OPTIONS)
    with pytest.raises(Exception, match="no pruning method named 'tome'; known: block, dynamicvit"):
        registry.get("tome")


@pytest.mark.parametrize("name", list(OPTIONS))
def test_token_method_applies_counts_exports_and_shows_its_kept_tokens(name, tmp_path):
    method = registry.get(name)
    model = tiny_vit()
    base_macs = measure.count(model)["macs"]
    assert registry.attached(model) is None
    model = _spread(method.apply(model, **OPTIONS[name])).eval()
    assert registry.attached(model) is method
    tokens = method.tokens_per_block(model)
    assert tokens[0] == PATCHES + 1 and tokens == sorted(tokens, reverse=True) and tokens[-1] < tokens[0]
    assert measure.count(model)["macs"] < base_macs
    assert method.describe(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # a checkpoint rebuilds the same method with the same logits
    loaded = models.load_checkpoint(models.save_checkpoint(tmp_path / "m.pt", model))
    assert registry.attached(loaded).name == name
    with torch.no_grad():
        logits = model(images)
        assert torch.allclose(loaded(images), logits, atol=1e-5)
    written = export.export_onnx(model, tmp_path / "m.onnx")
    assert written["kind"] == name
    assert export.verify(model, tmp_path / "m.onnx", batch_sizes=(2,))["ok"]
    masked_logits, masks = method.kept_token_masks(model, images)
    assert torch.allclose(masked_logits, logits, atol=1e-5)
    kept = [int(m[0].sum()) for m in masks]
    assert masks and all(m.shape == (2, PATCHES) and m.dtype == torch.bool for m in masks)
    assert kept == sorted(kept, reverse=True) and kept[-1] < PATCHES
    if name == "evit":  # a fused token kept at a later location holds no patch of its own
        assert all(c - i <= k <= c for i, (k, c) in enumerate(zip(kept, evit.keep_counts(model))))
    else:
        assert set(kept) <= {t - 1 for t in tokens} | {t - 1 - r for t, r in zip(tokens, _merges(model, name))}


def _merges(model, name):
    """Tokens merged inside each block (a merging block's masks are taken after its merge)."""
    return merging.merge_counts(model) if name == "merging" else [0] * len(model.blocks)
