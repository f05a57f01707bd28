"""models: the registered embedded ViT, weight loading (official layout, clear mismatch
errors), and vitprune/1 checkpoints of plain and pruned models."""

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from vitprune import hub, models, torchutil
from vitprune.errors import UserError


def test_vit_fmnist_is_a_registered_timm_vit():
    model = timm.create_model("vit_fmnist")
    assert isinstance(model, VisionTransformer)
    assert len(model.blocks) == 12 and all(isinstance(b.attn, Attention) for b in model.blocks)
    assert model.patch_embed.num_patches == 49 and model.patch_embed.grid_size == (7, 7)
    assert model.pos_embed.shape == (1, 50, 64)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    config = timm.data.resolve_model_data_config(model)
    assert config["input_size"] == (3, 28, 28) and config["crop_pct"] == 1.0
    with pytest.raises(UserError, match="no released weights"):
        timm.create_model("vit_fmnist", pretrained=True)


def test_conv_stem_shapes_and_extra_convs():
    model = models.create_model("vit_fmnist", stem_chans=[16, 32, 48], embed_dim=32, depth=2, num_heads=2)
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [1, 2, 2] and [c.out_channels for c in convs] == [16, 32, 48]
    assert model.patch_embed(torch.randn(1, 3, 28, 28)).shape == (1, 49, 32)
    with pytest.raises(UserError, match="power-of-two"):
        models.create_model("vit_fmnist", patch_size=3)
    with pytest.raises(UserError, match="unknown model"):
        models.create_model("no_such_vit")


def test_checkpoint_round_trip(tmp_path):
    model = models.create_model("vit_fmnist", num_classes=7, embed_dim=32, depth=3, num_heads=2).eval()
    path = models.save_checkpoint(tmp_path / "m.pt", model, top1=12.5)
    raw = torch.load(path, weights_only=False)
    assert raw["format"] == "vitprune/1" and raw["model_name"] == "vit_fmnist" and raw["top1"] == 12.5
    assert raw["block_spec"] is None and raw["dynamicvit"] is None
    loaded = models.load_checkpoint(path)
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_shapes_give_a_clear_error(tmp_path):
    path = models.save_checkpoint(tmp_path / "m.pt", models.create_model("vit_fmnist", depth=2))
    with pytest.raises(UserError) as info:
        models.create_model("vit_fmnist", depth=2, num_classes=5, checkpoint=path)
    msg = str(info.value)
    assert "mis-shaped" in msg and "head.weight (10, 64) vs model (5, 64)" in msg and "\n" not in msg
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    ckpt["state_dict"]["extra.weight"] = torch.zeros(1)
    del ckpt["state_dict"]["norm.bias"]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(UserError) as info:
        models.load_checkpoint(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "missing keys: norm.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "blocks.1.mlp.fc1.weight (3, 3) vs model (128, 64)" in msg
    with pytest.raises(UserError, match="not a vitprune/1 checkpoint"):
        torch.save({"model": {}}, tmp_path / "official.pt")
        models.load_checkpoint(tmp_path / "official.pt")
    with pytest.raises(UserError, match="not found"):
        models.load_checkpoint(tmp_path / "nope.pt")


def test_official_deit_layout_loads(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("deit_tiny_patch16_224", img_size=64)
    torch.save({"model": source.state_dict()}, tmp_path / "deit_tiny.pth")
    model = models.create_model("deit_tiny_patch16_224", img_size=64, checkpoint=tmp_path / "deit_tiny.pth")
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name
    # a distilled checkpoint into the plain model: the extra keys are named
    sd = dict(source.state_dict(), **{"dist_token": torch.zeros(1, 1, 192), "head_dist.weight": torch.zeros(1000, 192)})
    torch.save({"model": sd}, tmp_path / "distilled.pth")
    with pytest.raises(UserError, match="unexpected keys: dist_token, head_dist.weight"):
        models.create_model("deit_tiny_patch16_224", img_size=64, checkpoint=tmp_path / "distilled.pth")


def test_pretrained_without_hub_suggests_checkpoint(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(UserError, match="checkpoint=PATH"):
        models.create_model("deit_tiny_patch16_224", pretrained=True)


def test_pruned_checkpoint_rebuilds_spec_and_token_pruning(tmp_path):
    from vitprune.methods import block_pruning, dynamicvit
    torch.manual_seed(0)
    model = models.create_model("vit_fmnist")
    model = block_pruning.prune_to(model, keep_heads=0.5, keep_mlp=0.5)
    dynamicvit.attach(model, base_rate=0.7)
    model.eval()
    path = models.save_checkpoint(tmp_path / "pruned.pt", model)
    raw = torch.load(path, weights_only=False)
    assert raw["block_spec"] == [dict(s) for s in model.vitprune_block_spec]
    assert raw["dynamicvit"]["base_rate"] == 0.7
    loaded = models.load_checkpoint(path)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)
