"""EViT: counts with the fused token, rate 1 is the unmodified model, the fused token is the
attention-weighted sum of the dropped ones, kept masks, MACs, checkpoints and a fine-tune.
(Equality with the official code: test_official_fixtures.py.)"""

import pytest
import torch

from vitprune import measure, models
from vitprune.errors import UserError
from vitprune.methods import evit, merging, registry, vit_ops
from vitprune.models import create_model
from vitprune.train import finetune, recipe


def _tiny(depth=6):
    torch.manual_seed(0)
    return create_model("vit_fmnist", depth=depth).eval()


def test_counts_include_the_fused_token():
    model = evit.apply(_tiny(), 0.7, locations=(1, 3, 5))
    # 49 patches: keep ceil(0.7 * 49) = 35 (+ 1 fused), then ceil(0.7 * 36) = 26 (+ 1), then ceil(0.7 * 27) = 19
    assert evit.keep_counts(model) == [35, 26, 19]
    assert evit.tokens_per_block(model) == [50, 50, 37, 37, 28, 28]
    seen = []
    hooks = [blk.norm2.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1])) for blk in model.blocks]
    with torch.no_grad():
        model(torch.randn(2, 3, 28, 28))
    for h in hooks:
        h.remove()
    assert seen == [50, 37, 37, 28, 28, 21]  # the MLP of a location's block already sees the kept tokens
    unfused = evit.apply(_tiny(), 0.7, locations=(1, 3, 5), fuse_token=False)
    assert evit.keep_counts(unfused) == [35, 25, 18]


def test_rate_one_is_the_unmodified_model():
    base = _tiny()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        ref = base(x)
        out = evit.apply(base, 1.0, locations=(1, 3))(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    macs = [measure.count(evit.apply(_tiny(), rate, locations=(1, 3)))["macs"] for rate in (1.0, 0.7, 0.5)]
    assert macs[0] == measure.count(_tiny())["macs"] and macs[0] > macs[1] > macs[2]


def test_the_fused_token_is_the_attention_weighted_sum_of_the_dropped_ones():
    model = evit.apply(_tiny(depth=2), 0.5, locations=(1,))
    x = torch.randn(2, 3, 28, 28)
    seen = {}
    model.blocks[1].norm2.register_forward_hook(lambda m, i, o: seen.setdefault("mlp_in", i[0]))
    with torch.no_grad():
        tokens = model.blocks[0](vit_ops.embed(model, x))
        blk = model.blocks[1]
        attended, cls_attn = vit_ops.attention_with_cls(blk.attn, blk.norm1(tokens))
        after = tokens + attended
        _, masks = evit.kept_token_masks(model, x)
    kept = masks[0]
    assert kept.sum(1).tolist() == [25, 25]  # ceil(0.5 * 49); the fused token holds no patch of its own
    dropped = ~kept
    expected = (after[:, 1:] * (cls_attn * dropped).unsqueeze(-1)).sum(1)
    torch.testing.assert_close(seen["mlp_in"][:, -1], expected)
    # the kept ones are the most attended, in their original order
    top = cls_attn.topk(25, dim=1).indices
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, top, True))
    torch.testing.assert_close(seen["mlp_in"][:, 1:-1], after[:, 1:][kept].view(2, 25, -1))


def test_checkpoint_round_trip_and_one_token_method_at_a_time(tmp_path):
    model = evit.apply(_tiny(), [0.8, 0.6], locations=(2, 4))
    models.save_checkpoint(tmp_path / "m.pt", model)
    loaded = models.load_checkpoint(tmp_path / "m.pt")
    assert evit.config(loaded) == evit.config(model)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(UserError, match="already has EViT"):
        merging.apply(model, 2)
    with pytest.raises(UserError, match="already has ToMe"):
        evit.apply(merging.apply(_tiny(), 2), 0.7)
    with pytest.raises(UserError, match="one rate in"):
        evit.apply(_tiny(), [0.7, 0.5], locations=(1, 3, 5))
    assert registry.get("evit").trains


def test_a_fine_tune_trains_through_the_fused_token():
    model = finetune.prepare(_tiny(depth=2), "evit", {"base_rate": 0.5, "locations": [1]})
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 28, 28), torch.randint(0, 10, (16,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune.finetune(model, "evit", data, recipe.TrainConfig(epochs=1, batch_size=8, lr=1e-3,
                                                                                      progress=False),
                              teacher=_tiny(depth=2))
    assert len(tuned.history) == 1 and "EViT keeps [0.5]" in tuned.plugged["evit"].summary
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert evit.config(model)["keep_rate"] == [0.5]
