"""ToMe-style token merging: identity at r = 0, tokens per block, MACs of the merged shapes,
the merge and proportional attention themselves, matched-MAC schedules."""

from __future__ import annotations

import pytest
import torch

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import block_pruning, dynamicvit, merging
from vitprune.models import create_model


def _tiny(depth=4, **kw):
    torch.manual_seed(0)
    return create_model("vit_fmnist", depth=depth, **kw).eval()


def test_r_zero_is_the_unmodified_model():
    base = _tiny()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        ref = base(x)
        out = merging.apply(base, 0)(x)
    assert torch.equal(out, ref)
    assert measure.count(base)["macs"] == measure.count(_tiny())["macs"]


def _seen_tokens(model, x):
    """Tokens entering each block's attention (norm1) and MLP (norm2), from forward hooks."""
    seen = {"attn": [], "mlp": []}
    hooks = [blk.norm1.register_forward_hook(lambda m, i, o: seen["attn"].append(i[0].shape[1]))
             for blk in model.blocks]
    hooks += [blk.norm2.register_forward_hook(lambda m, i, o: seen["mlp"].append(i[0].shape[1]))
              for blk in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_tokens_per_block_and_clipping():
    model = merging.apply(_tiny(), 3)
    assert merging.tokens_per_block(model) == [50, 47, 44, 41]
    seen = _seen_tokens(model, torch.randn(2, 3, 28, 28))
    assert seen == {"attn": [50, 47, 44, 41], "mlp": [47, 44, 41, 38]}
    merging.apply(model, 30)  # at most half the patch tokens merge in a block
    assert merging.merge_counts(model) == [24, 12, 6, 3]
    assert _seen_tokens(model, torch.randn(1, 3, 28, 28))["mlp"] == [26, 14, 8, 5]


def test_macs_count_the_merged_shapes():
    model = merging.apply(_tiny(), [2, 5, 0, 4])
    res = measure.count(model, per_module=True)
    by = res["macs_by_module"]
    tokens_in = merging.tokens_per_block(model)
    tokens_mlp = [t - r for t, r in zip(tokens_in, merging.merge_counts(model))]
    dim, hidden = model.embed_dim, model.blocks[0].mlp.fc1.out_features
    for i in range(4):
        assert by[f"blocks.{i}.attn.qkv"] == tokens_in[i] * dim * 3 * dim
        assert by[f"blocks.{i}.mlp.fc1"] == tokens_mlp[i] * dim * hidden
    macs = [measure.count(merging.apply(_tiny(), r))["macs"] for r in (0, 2, 6)]
    assert macs[0] > macs[1] > macs[2]


def test_bipartite_merge_keeps_mass_and_merges_duplicates_first():
    torch.manual_seed(0)
    x = torch.randn(2, 1 + 8, 4)
    x[:, 3] = x[:, 4]  # patch tokens 2 (set A) and 3 (set B) are identical
    size = torch.ones(2, 9, 1)
    merged, new_size, _ = merging.bipartite_merge(x, size, x, r=1, prefix=1)
    assert merged.shape == (2, 8, 4) and new_size.sum(dim=1).flatten().tolist() == [9.0, 9.0]
    torch.testing.assert_close((merged * new_size).sum(dim=1), (x * size).sum(dim=1))
    assert torch.equal(merged[:, 0], x[:, 0])  # CLS untouched, first
    assert (new_size == 2).sum().item() == 2  # one merged pair per image: the duplicates
    hit = (new_size[..., 0] == 2).nonzero()[:, 1]
    torch.testing.assert_close(merged[torch.arange(2), hit], x[:, 4])


def test_proportional_attention_weighs_a_token_by_its_size():
    """A token of size 2 must act on the others as two copies of it would (ToMe eq. 1)."""
    attn = _tiny(depth=1, fused_attn=False).blocks[0].attn
    torch.manual_seed(1)
    x = torch.randn(1, 6, 64)
    dup = torch.cat([x, x[:, 5:6]], dim=1)  # token 5 twice, sizes 1
    with torch.no_grad():
        out_dup, _ = merging._attention(attn, dup, torch.ones(1, 7, 1))
        size = torch.ones(1, 6, 1)
        size[0, 5] = 2
        out_w, _ = merging._attention(attn, x, size)
        attn.fused_attn = True
        out_fused, _ = merging._attention(attn, x, size)
    torch.testing.assert_close(out_w[:, :5], out_dup[:, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_fused, out_w, atol=1e-5, rtol=1e-5)


def test_schedule_for_matched_macs():
    model = _tiny(depth=2)  # each bisection step is one fvcore trace
    found = merging.schedule_for_macs(model, mac_ratio=1.15)  # the conv stem is ~20 % of 2 blocks
    assert getattr(model, merging.CONFIG_ATTR, None) is None  # left as it was
    assert abs(found["macs"] - found["target_macs"]) / found["target_macs"] < 0.02
    assert measure.count(merging.apply(model, found["r"]))["macs"] == found["macs"]
    assert max(found["r"]) - min(found["r"]) <= 1  # spread evenly
    with pytest.raises(UserError, match="below what merging can reach"):
        merging.schedule_for_macs(model, mac_ratio=50)


@pytest.mark.parametrize("curve", ["linear", "convex"])
def test_schedule_search_finds_what_a_bisection_finds_in_fewer_counts(monkeypatch, curve):
    """The interpolated search keeps the bisection's answer (smallest count of merges at or below the
    target, then the closer of it and one fewer) for every target, with fewer counts."""
    model = _tiny(depth=4)
    total = len(model.blocks) * (int(model.patch_embed.num_patches) // 2)

    def fake_macs(n: int) -> int:  # monotone in the merges, as the real counts are
        return 10_000_000 - 40_000 * n + (0 if curve == "linear" else 300 * n * n // total)

    calls = []

    def count(m, **_):
        calls.append(1)
        return {"macs": fake_macs(sum(merging.config(m)["r"]))}  # the merges asked for

    monkeypatch.setattr(measure, "count", count)
    for target in range(int(fake_macs(total)), 10_000_001, 37_777):
        lo, hi = 0, total  # the reference: plain bisection
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fake_macs(mid) <= target else (mid + 1, hi)
        best = lo - 1 if lo > 0 and abs(fake_macs(lo - 1) - target) < abs(fake_macs(lo) - target) else lo
        calls.clear()
        found = merging.schedule_for_macs(model, target_macs=target)
        assert sum(found["r"]) == best and found["macs"] == fake_macs(best)
        assert len(calls) <= 6, f"{len(calls)} counts for target {target}"


def test_block_pruned_model_merges_and_bad_input_is_refused():
    model = merging.apply(block_pruning.prune_to(_tiny(), 0.5, 0.5), 2)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(UserError, match="DynamicViT"):
        merging.apply(dynamicvit.attach(_tiny(), 0.7, locations=(1, 2)), 2)
    with pytest.raises(UserError, match="one int or 4 ints"):
        merging.apply(_tiny(), [1, 2])
    with pytest.raises(UserError, match=">= 0"):
        merging.apply(_tiny(), -1)


def test_fused_attention_counts_like_explicit_matmuls():
    """DeiT runs fused SDPA (with the log-size bias as its mask); its count must equal the
    explicit-matmul path's, as measure's SDPA handle promises."""
    explicit = merging.apply(_tiny(depth=2, fused_attn=False), 5)
    fused = merging.apply(_tiny(depth=2, fused_attn=True), 5)
    assert measure.count(fused)["macs"] == measure.count(explicit)["macs"]
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)
