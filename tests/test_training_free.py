"""Training-free CLS-attention top-k comparator: counts, identity at rate 1, MACs, which tokens are kept."""

import pytest
import torch

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import block_pruning, dynamicvit, selection, token_schedule, training_free, vit_ops
from vitprune.models import create_model


def _tiny(**kw):
    torch.manual_seed(0)
    return create_model("vit_fmnist", depth=6, **kw).eval()


def test_keep_counts_equal_dynamicvit():
    model = training_free.apply(_tiny(), base_rate=0.7, locations=(1, 3, 5))
    n = int(model.patch_embed.num_patches)
    assert training_free.keep_counts(model) == token_schedule.keep_counts(n, 0.7, locations=(1, 3, 5))
    tokens = training_free.tokens_per_block(model)
    assert tokens[0] == n + 1 and tokens[1] == token_schedule.keep_counts(n, 0.7, locations=(1, 3, 5))[0] + 1


def test_rate_one_equals_unmodified_model():
    base = _tiny()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        ref = base(x)
        pruned = training_free.apply(base, base_rate=1.0, locations=(1, 3, 5))
        out = pruned(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_macs_fall_with_rate():
    macs = []
    for rate in (1.0, 0.8, 0.5):
        macs.append(measure.count(training_free.apply(_tiny(), base_rate=rate, locations=(1, 3, 5)))["macs"])
    assert macs[0] > macs[1] > macs[2]
    assert measure.count(_tiny())["macs"] == macs[0]


def test_kept_tokens_are_the_top_cls_attention_ones():
    model = _tiny()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = vit_ops.embed(model, x)
        blk = model.blocks[0]
        normed = blk.norm1(tokens)
        attn = blk.attn
        B, T, _ = normed.shape
        q, k, _ = attn.qkv(normed).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        w = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0, 1:].mean(1)  # [B, N]
    training_free.apply(model, base_rate=0.5, locations=(1,))
    _, masks = training_free.kept_token_masks(model, x)
    k = training_free.keep_counts(model)[0]
    # ranked as `selection` ranks: log attention rounded to its step, ties to the lower index
    top = selection.top_k(w.log(), k, step=selection.STEP, low=selection.LOG_RANGE[0], high=selection.LOG_RANGE[1])
    expected = torch.zeros_like(masks[0]).scatter_(1, top, True)
    assert masks[0].sum(1).tolist() == [k, k]
    assert torch.equal(masks[0], expected)


def test_no_attention_block_before_a_location_still_runs():
    model = _tiny()
    block_pruning.apply_spec(model, [{"heads": 0 if i in (0, 1) else 4, "mlp": 128} for i in range(6)])
    training_free.apply(model, base_rate=0.7, locations=(2, 4))
    assert training_free.score_sources(model) == [None, 3]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert measure.count(model)["macs"] < measure.count(block_pruning.apply_spec(
        _tiny(), [{"heads": 0 if i in (0, 1) else 4, "mlp": 128} for i in range(6)]))["macs"]


def test_refuses_a_dynamicvit_model_and_bad_rates():
    with pytest.raises(UserError):
        training_free.apply(dynamicvit.attach(_tiny(), 0.7, locations=(1, 3, 5)), 0.7, locations=(1, 3, 5))
    with pytest.raises(UserError):
        training_free.apply(_tiny(), base_rate=1.5, locations=(1, 3, 5))
