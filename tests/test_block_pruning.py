"""Block pruning: masks, importance, schedule, physical removal, spec round trip, counts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from conftest import smoke_run
from vitprune.cli import measure as cli_measure
from vitprune.errors import UserError
from vitprune.methods import block_importance, block_masks, dynamicvit
from vitprune.methods import block_pruning as bp


DEPTH, DIM, HEADS, HIDDEN = 12, 48, 3, 192


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=4, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                             num_classes=10, **kw).eval()


def deit_tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", img_size=64, num_classes=10).eval()


def random_masks(model, seed=1, dead_attn=(2,), dead_mlp=(3,)):
    g = torch.Generator().manual_seed(seed)
    spec = block_masks.block_spec(model)
    heads = [torch.rand(s["heads"], generator=g) > 0.5 for s in spec]
    chans = [torch.rand(s["mlp"], generator=g) > 0.5 for s in spec]
    for i in dead_attn:
        heads[i][:] = False
    for i in dead_mlp:
        chans[i][:] = False
    heads[0][0] = True  # never an accidental all-dead first block
    return heads, chans


def count(measure, model):
    return measure.count(model, img_size=tuple(model.patch_embed.img_size))


def images(model, n=2, seed=0):
    size = model.patch_embed.img_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [
    tiny_vit,
    lambda: tiny_vit(qkv_bias=True, qk_norm=True, scale_attn_norm=True, scale_mlp_norm=True),
    lambda: tiny_vit(init_values=0.1, global_pool="avg", class_token=False),
    deit_tiny,
], ids=["tiny", "tiny-norms", "tiny-layerscale-avgpool", "deit_tiny"])
def test_masked_equals_removed(make):
    model = make()
    x = images(model)
    with torch.no_grad():
        full = model(x)
    heads, chans = random_masks(model)
    block_masks.set_masks(model, heads, chans)
    with torch.no_grad():
        masked = model(x)
    assert (masked - full).abs().max() > 1e-3  # the masks really change the model
    bp.remove(model)
    assert not block_masks.has_masks(model)
    assert not any(name.endswith(block_masks.MASK) for name in model.state_dict())
    with torch.no_grad():
        removed = model(x)
    assert (removed - masked).abs().max() <= 1e-4
    spec = model.vitprune_block_spec
    assert spec == [{"heads": int(h.sum()), "mlp": int(c.sum())} for h, c in zip(heads, chans)]
    assert isinstance(model.blocks[2].attn, bp.NoAttention) and model.blocks[2].attn.num_heads == 0
    assert isinstance(model.blocks[3].mlp, bp.NoMlp)
    for blk, s in zip(model.blocks, spec):
        if s["heads"]:
            a = blk.attn
            assert a.num_heads == s["heads"] and a.attn_dim == s["heads"] * a.head_dim
            assert a.head_dim == DIM // HEADS or a.head_dim == 64
            assert a.scale == a.head_dim ** -0.5
            assert a.qkv.weight.shape[0] == 3 * a.attn_dim and a.proj.weight.shape[1] == a.attn_dim
        if s["mlp"]:
            assert blk.mlp.fc1.out_features == s["mlp"] == blk.mlp.fc2.in_features


def test_removed_model_trains_and_keeps_weights_of_kept_heads():
    model = tiny_vit(qkv_bias=True)
    qkv0 = model.blocks[5].attn.qkv.weight.detach().clone()
    heads = [torch.ones(HEADS, dtype=torch.bool) for _ in range(DEPTH)]
    chans = [torch.ones(HIDDEN, dtype=torch.bool) for _ in range(DEPTH)]
    heads[5] = torch.tensor([True, False, True])
    block_masks.set_masks(model, heads, chans)
    bp.remove(model)
    d = DIM // HEADS
    kept_rows = torch.cat([torch.arange(s * DIM + h * d, s * DIM + (h + 1) * d) for s in range(3) for h in (0, 2)])
    assert torch.equal(model.blocks[5].attn.qkv.weight, qkv0[kept_rows])
    model.train()
    loss = model(images(model)).logsumexp(-1).mean()
    loss.backward()
    assert model.blocks[5].attn.qkv.weight.grad.shape == (3 * 2 * d, DIM)


def test_spec_roundtrip_rebuilds_shapes(tmp_path):
    model = tiny_vit(qkv_bias=True)
    block_masks.set_masks(model, *random_masks(model, seed=3))
    bp.remove(model)
    spec = model.vitprune_block_spec
    path = tmp_path / "pruned.pt"
    torch.save({"spec": spec, "state_dict": model.state_dict()}, path)

    fresh = tiny_vit(qkv_bias=True)
    saved = torch.load(path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(saved["state_dict"])
    bp.apply_spec(fresh, saved["spec"])
    fresh.load_state_dict(saved["state_dict"])  # strict
    assert fresh.vitprune_block_spec == spec
    x = images(model)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_apply_spec_rejects_bad_specs():
    model = tiny_vit()
    with pytest.raises(UserError, match="12 blocks"):
        bp.apply_spec(model, [{"heads": 1, "mlp": 4}] * 3)
    with pytest.raises(UserError, match=r"heads=4 must be an int in \[0, 3\]"):
        bp.apply_spec(model, [{"heads": 4, "mlp": 4}] * DEPTH)
    with pytest.raises(UserError, match="entry 0"):
        bp.apply_spec(model, [{"heads": 1}] * DEPTH)


def _hand_params_and_macs(model, spec, n_tokens):
    """Params and MACs removed from an unpruned tiny/deit model by `spec`, by formula."""
    params = macs = 0
    for blk, s in zip(model.blocks, spec):
        a, m = blk.attn, blk.mlp
        d, dim = a.head_dim, a.qkv.in_features
        gone_h = a.num_heads - s["heads"]
        params += gone_h * (3 * d * dim + (3 * d if a.qkv.bias is not None else 0) + d * dim)
        macs += gone_h * (n_tokens * dim * 3 * d + 2 * n_tokens * n_tokens * d + n_tokens * d * dim)
        if s["heads"] == 0:
            params += dim  # proj bias goes with the branch
        gone_c = m.fc1.out_features - s["mlp"]
        params += gone_c * (dim + 1 + dim)
        macs += gone_c * 2 * n_tokens * dim
        if s["mlp"] == 0:
            params += dim  # fc2 bias
    return params, macs


def test_counts_match_measure_and_formula():
    from vitprune import measure
    base = deit_tiny()
    base_count = count(measure, base)
    opts = {"block": {"keep_heads": 0.5, "keep_mlp": 0.3}}
    variant = cli_measure.apply_variant(copy.deepcopy(base), opts)  # what `measure --keep-heads --keep-mlp` builds
    direct = bp.prune_to(copy.deepcopy(base), 0.5, 0.3)
    spec = direct.vitprune_block_spec
    assert spec == [{"heads": 2, "mlp": 230}] * DEPTH  # 0.5*3 -> 2 (half up), 0.3*768 = 230.4 -> 230
    assert variant.vitprune_block_spec == spec
    got = count(measure, variant)
    n_tokens = base.patch_embed.num_patches + 1
    d_params, d_macs = _hand_params_and_macs(base, spec, n_tokens)
    assert got["params"] == base_count["params"] - d_params == sum(p.numel() for p in direct.parameters())
    assert got["macs"] == base_count["macs"] - d_macs
    assert count(measure, direct)["macs"] == got["macs"]
    assert bp.block_macs(base) - bp.block_macs(direct) == d_macs


def test_all_heads_and_channels_removed():
    from vitprune import measure
    model = tiny_vit()
    base_params = sum(p.numel() for p in model.parameters())
    bp.prune_to(model, 0.0, 0.0)
    assert all(isinstance(b.attn, bp.NoAttention) and isinstance(b.mlp, bp.NoMlp) for b in model.blocks)
    assert model.vitprune_block_spec == [{"heads": 0, "mlp": 0}] * DEPTH
    x = images(model)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    removed, _ = _hand_params_and_macs(tiny_vit(), model.vitprune_block_spec, 65)
    assert sum(p.numel() for p in model.parameters()) == base_params - removed
    c = count(measure, model)
    assert c["macs"] > 0 and c["macs_by_operator"].get("linear", 0) == DIM * 10  # only the head

    fresh = tiny_vit()
    bp.apply_spec(fresh, model.vitprune_block_spec)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), out)


def test_min_heads_forbids_empty_blocks():
    model = tiny_vit()
    bp.prune_to(model, 0.0, 0.0, min_heads=1, min_mlp=2)
    assert model.vitprune_block_spec == [{"heads": 1, "mlp": 2}] * DEPTH
    model = tiny_vit()
    bp.prune_to(model, 0.4, 0.5, scope="global", min_heads=1)
    spec = model.vitprune_block_spec
    assert all(s["heads"] >= 1 for s in spec)
    assert sum(s["heads"] for s in spec) == bp.keep_count(0.4, DEPTH * HEADS, 0) == 14
    assert sum(s["mlp"] for s in spec) == DEPTH * HIDDEN // 2


def test_keep_count_and_select_units():
    assert [bp.keep_count(0.5, n) for n in (3, 6, 12, 1)] == [2, 3, 6, 1]
    assert bp.keep_count(0.0, 3) == 0 and bp.keep_count(0.0, 3, minimum=1) == 1
    assert bp.keep_count(0.1, 2, minimum=5) == 2
    scores = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([10.0, 20.0, 30.0])]
    layer = bp.select_units(scores, 1 / 3, scope="layer")
    assert [m.tolist() for m in layer] == [[True, False, False], [False, False, True]]
    # global: L2-normalised per layer, so layer 0's 3/sqrt(14)=0.80 beats layer 1's 20/sqrt(1400)=0.53
    glob = bp.select_units(scores, 0.5, scope="global")
    assert [m.tolist() for m in glob] == [[True, False, True], [False, False, True]]
    # monotone: an inactive unit is never picked even with the best score
    active = [torch.tensor([False, True, True]), torch.ones(3, dtype=torch.bool)]
    mono = bp.select_units(scores, 1 / 3, scope="layer", active=active)
    assert mono[0].tolist() == [False, False, True]
    with pytest.raises(UserError, match="fraction"):
        bp.select_units(scores, 1.5)
    with pytest.raises(UserError, match="scope"):
        bp.select_units(scores, 0.5, scope="row")


def test_cubic_schedule_values():
    # Zhu & Gupta 2017: keep = k_f + (1 - k_f)(1 - p)^3, p = progress between start and end
    total = 100
    assert bp.cubic_keep(-1, total, 0.25) == pytest.approx(1.0)
    assert bp.cubic_keep(34, total, 0.25, start=0.0, end=0.7) == pytest.approx(0.25 + 0.75 * 0.5 ** 3)
    assert bp.cubic_keep(69, total, 0.25, end=0.7) == pytest.approx(0.25)
    assert bp.cubic_keep(99, total, 0.25, end=0.7) == pytest.approx(0.25)
    assert bp.cubic_keep(9, total, 0.5, start=0.1, end=0.5) == pytest.approx(1.0)
    assert bp.cubic_keep(19, total, 0.5, start=0.1, end=0.5) == pytest.approx(0.5 + 0.5 * 0.75 ** 3)
    vals = [bp.cubic_keep(s, total, 0.3) for s in range(total)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(UserError, match="start < end"):
        bp.cubic_keep(0, total, 0.5, start=0.8, end=0.5)


def test_taylor_score_is_gate_gradient():
    """Σ w·∂L/∂w over proj (fc2) columns equals ∂L/∂ξ of an explicit gate on the unit."""
    model = tiny_vit(qkv_bias=True)
    x, y = images(model, n=4), torch.tensor([1, 2, 3, 4])
    gates = {}

    def gate_hook(name):
        def hook(module, args):
            return (args[0] * gates[name],)
        return hook

    handles = []
    for i, blk in enumerate(model.blocks):
        gates[f"h{i}"] = torch.ones(HEADS, requires_grad=True)
        gates[f"c{i}"] = torch.ones(HIDDEN, requires_grad=True)
        d = blk.attn.head_dim
        handles.append(blk.attn.proj.register_forward_pre_hook(
            lambda m, a, i=i, d=d: (a[0] * gates[f"h{i}"].repeat_interleave(d),)))
        handles.append(blk.mlp.fc2.register_forward_pre_hook(gate_hook(f"c{i}")))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    heads, chans = block_importance.taylor_scores_from_grads(model)
    for i in range(DEPTH):
        torch.testing.assert_close(heads[i], gates[f"h{i}"].grad.abs(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(chans[i], gates[f"c{i}"].grad.abs(), rtol=1e-4, atol=1e-7)
    for h in handles:
        h.remove()
    # one-shot Taylor over a dataset sums the per-batch scores; grads are restored
    ds = torch.utils.data.TensorDataset(x, y)
    before = [p.grad for p in model.parameters()]
    th, tc = block_importance.taylor_importance(model, ds, batch_size=4)
    torch.testing.assert_close(th[0], heads[0], rtol=1e-4, atol=1e-7)
    assert all(a is b for a, b in zip(before, (p.grad for p in model.parameters())))
    with pytest.raises(UserError, match="needs data"):
        bp.prune_to(tiny_vit(), 0.5, 0.5, importance="taylor")
    pruned = bp.prune_to(tiny_vit(qkv_bias=True), 0.5, 0.5, importance="taylor", data=ds, scope="global")
    assert sum(s["heads"] for s in pruned.vitprune_block_spec) == 18


def test_gradual_pruner_reaches_target_and_is_monotone():
    model = tiny_vit()
    teacher = copy.deepcopy(model)
    pruner = bp.GradualPruner(model, keep_heads=1 / 3, keep_mlp=0.25, importance="taylor",
                              scope="global", min_heads=0, end=0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    total = 10
    g = torch.Generator().manual_seed(0)
    counts = []
    model.train()
    for step in range(total):
        x = torch.randn(8, 3, 32, 32, generator=g)
        with torch.no_grad():
            t = teacher(x)
        loss = torch.nn.functional.kl_div(model(x).log_softmax(-1), t.softmax(-1), reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        pruner(step, total, model)
        opt.step()
        h, c = block_masks.get_masks(model)
        counts.append((int(sum(m.sum() for m in h)), int(sum(m.sum() for m in c))))
    assert counts[-1] == (12, DEPTH * HIDDEN // 4)
    assert counts == sorted(counts, reverse=True)
    assert counts[6] == counts[-1]  # end=0.6: target reached after step 6 of 10
    assert pruner.log and pruner.log[-1]["heads"] == 12
    kept = bp.kept_units(model)
    model.eval()
    x = images(model)
    with torch.no_grad():
        masked = model(x)
    bp.remove(model)
    with torch.no_grad():
        assert (model(x) - masked).abs().max() <= 1e-4
    assert [s["heads"] for s in model.vitprune_block_spec] == [len(k["heads"]) for k in kept]


def test_masks_survive_state_dict_for_resume():
    model = tiny_vit()
    block_masks.set_masks(model, *random_masks(model))
    state = model.state_dict()
    other = tiny_vit()
    block_masks.attach_masks(other)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(block_masks.get_masks(other)[1], block_masks.get_masks(model)[1]))


@pytest.mark.parametrize("keep_heads", [0.5, 0.25])
def test_keep_mlp_for_mac_ratio_reaches_the_ratio_tightly(keep_heads):
    from vitprune import measure
    model = deit_tiny()
    total = count(measure, model)["macs"]
    f = bp.keep_mlp_for_mac_ratio(model, 2.0, keep_heads, total_macs=total)
    pruned = bp.prune_to(copy.deepcopy(model), keep_heads, f)
    assert total / count(measure, pruned)["macs"] >= 2.0
    looser = bp.prune_to(copy.deepcopy(model), keep_heads, f + 0.01)
    assert total / count(measure, looser)["macs"] < 2.0 or f + 0.01 > 1
    with pytest.raises(UserError, match=">= 1"):
        bp.keep_mlp_for_mac_ratio(model, 0.5, keep_heads, total_macs=total)


def test_unreachable_mac_ratio_says_lower_keep_heads():
    from vitprune import measure
    model = deit_tiny()
    with pytest.raises(UserError, match="lower keep_heads"):
        bp.keep_mlp_for_mac_ratio(model, 3.0, 1.0, total_macs=count(measure, model)["macs"])


def test_unsupported_model_is_a_user_error():
    with pytest.raises(UserError, match="no `blocks`"):
        bp.prune_to(torch.nn.Linear(3, 3), 0.5, 0.5)


def _token_pruned_tiny():
    model = tiny_vit()
    dynamicvit.attach(model, base_rate=0.7)
    return model.eval()


def test_block_pruning_on_token_pruned_model():
    model = _token_pruned_tiny()
    predictors = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("score_predictor.")}
    assert predictors
    x = images(model, n=3)
    heads, chans = random_masks(model, seed=5)
    block_masks.set_masks(model, heads, chans)
    with torch.no_grad():
        masked_eval = model(x)
    model.train()
    dynamicvit.set_decision_mode(model, "topk")
    with torch.no_grad():
        masked_train = model(x)
    bp.remove(model)
    with torch.no_grad():
        removed_train = model(x)
        model.eval()
        removed_eval = model(x)
    assert (removed_eval - masked_eval).abs().max() <= 1e-4
    assert (removed_train - masked_train).abs().max() <= 1e-4
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in predictors.items())
    assert model.vitprune_dynamicvit  # token config kept

    # checkpoint order of models.load_checkpoint: base model -> apply_spec -> attach -> load
    fresh = tiny_vit()
    bp.apply_spec(fresh, model.vitprune_block_spec)
    dynamicvit.attach(fresh, base_rate=0.7)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), removed_eval)


def test_taylor_on_token_pruned_model_uses_tokens_per_block():
    from vitprune import measure
    model = _token_pruned_tiny()
    tokens = dynamicvit.tokens_per_block(model)
    assert tokens[-1] < tokens[0]
    before = bp.block_macs(model)
    ds = torch.utils.data.TensorDataset(images(model, n=4), torch.tensor([0, 1, 2, 3]))
    bp.prune_to(model, 0.5, 0.5, importance="taylor", data=ds)
    spec = model.vitprune_block_spec
    removed = sum((HEADS - s["heads"]) * (DIM // HEADS) * (n * DIM * 3 + 2 * n * n + n * DIM)
                  + (HIDDEN - s["mlp"]) * 2 * n * DIM for s, n in zip(spec, tokens))
    assert before - bp.block_macs(model) == removed
    assert count(measure, model)["macs"] > 0


# ---------------------------------------------------------------- notebook 03 (smoke profile)


def test_notebook_03_smoke(smoke_runs):
    from vitprune import measure, models
    from vitprune.study import results

    run = smoke_run(smoke_runs, "03_block_pruning")
    m = results.read_metrics(run)
    for key in ("method", "label", "model_name", "img_size", "params", "macs", "flops", "top1", "top5",
                "eval_samples", "train_wall_time_s", "history", "block_spec", "keep_heads", "keep_mlp",
                "mac_ratio", "baseline_heads", "baseline_mlp"):
        assert key in m, key
    assert m["method"] == "block" and m["flops"] == 2 * m["macs"]
    assert m["removal_max_abs_diff"] <= 1e-4
    spec = m["block_spec"]
    # smoke keeps 15 % of the heads over all blocks: some blocks lose their attention entirely
    assert sum(s["heads"] for s in spec) == bp.keep_count(0.15, sum(m["baseline_heads"]))
    assert any(s["heads"] == 0 for s in spec)
    assert sum(s["mlp"] for s in spec) == bp.keep_count(0.5, sum(m["baseline_mlp"]))
    assert m["macs"] < m["baseline_macs"] and m["mac_ratio"] == pytest.approx(m["baseline_macs"] / m["macs"])
    model = models.load_checkpoint(run / "model.pt")  # apply_spec rebuilds the pruned shapes
    assert block_masks.block_spec(model) == spec
    assert any(isinstance(b.attn, bp.NoAttention) for b in model.blocks)
    c = measure.count(model)
    assert (c["params"], c["macs"]) == (m["params"], m["macs"])


def test_widths_for_mac_ratio_drops_heads_only_when_the_ratio_is_out_of_reach():
    from vitprune import measure, models

    model = models.vit_fmnist().eval()
    total = measure.count(model)["macs"]
    # 2 of 4 heads reach 2x with an MLP width to spare: the head fraction stays
    assert bp.widths_for_mac_ratio(model, 2.0, 0.5, total_macs=total)[0] == 0.5
    # 3x is out of reach with 2 heads even with no MLP left (vit_fmnist: ~2.7x at most): 1 head
    heads, mlp = bp.widths_for_mac_ratio(model, 3.0, 0.5, total_macs=total)
    assert heads == 0.25 and 0.0 < mlp < 1.0
    with pytest.raises(UserError):
        bp.keep_mlp_for_mac_ratio(model, 3.0, 0.5, total_macs=total)
    pruned = bp.prune_to(model, heads, mlp, "magnitude")
    assert total / measure.count(pruned)["macs"] >= 3.0
    with pytest.raises(UserError, match="out of reach"):
        bp.widths_for_mac_ratio(model, 1000.0, 0.5, total_macs=total)
