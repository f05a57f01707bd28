"""DynamicViT token pruning: schedules, keep counts, masked vs gathered forward, losses, checkpoints."""

import argparse
import json
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from conftest import smoke_run
from vitprune.errors import UserError
from vitprune.methods import dynamicvit, dynamicvit_io, dynamicvit_loss, token_schedule

torch.set_num_threads(2)


def tiny_vit(seed=0, **kw):
    """Depth 12 like DeiT (so blocks 3/6/9 exist), width 32, 32x32 input, 8x8 = 64 patches."""
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=4, embed_dim=32, depth=12, num_heads=4, num_classes=10)
    args.update(kw)
    return VisionTransformer(**args)


class ZeroAttention(nn.Module):
    """Stand-in for block_pruning.NoAttention: a block whose attention lost every head."""

    num_heads = 0

    def forward(self, x, attn_mask=None, is_causal=False):
        return torch.zeros_like(x)


# ---------------------------------------------------------------- schedules and counts


def test_keep_counts_per_schedule_deit_grid():
    # 14 x 14 = 196 patch tokens (DeiT at 224), CLS excluded, floor(N * cumulative ratio)
    assert token_schedule.keep_counts(196, 0.7, "geometric") == [137, 96, 67]  # 0.7, 0.49, 0.343
    assert token_schedule.keep_counts(196, 0.7, "linear") == [137, 98, 58]  # 0.7, 0.5, 0.3
    assert token_schedule.keep_counts(196, 0.5, "geometric") == [98, 49, 24]
    assert token_schedule.keep_counts(196, None, "explicit", keep_ratios=[0.5, 0.25, 0.1]) == [98, 49, 19]
    assert token_schedule.keep_counts(196, 0.9, "geometric", locations=(4, 8)) == [176, 158]


def test_keep_counts_ignore_binary_float_noise():
    # 0.7 - 0.4 == 0.29999999999999993 in floats; int(10 * that) would be 2, we count 0.3 -> 3
    assert token_schedule.keep_counts(10, 0.7, "linear") == [7, 5, 3]


def test_schedule_ratios():
    assert token_schedule.schedule_ratios(0.8, "geometric", num_stages=3) == pytest.approx([0.8, 0.64, 0.512])
    assert token_schedule.schedule_ratios(0.8, "linear", num_stages=3) == pytest.approx([0.8, 0.6, 0.4])


def test_empty_stage_is_an_error_naming_the_stage():
    with pytest.raises(UserError, match=r"stage 2 \(before block 9\) keeps 0 of 196"):
        token_schedule.keep_counts(196, 0.4, "linear")
    assert token_schedule.keep_counts(196, 0.4, "linear", allow_empty_stage=True) == [78, 39, 0]
    with pytest.raises(UserError, match="stage 2"):
        dynamicvit.attach(tiny_vit(), 0.4, "linear")


@pytest.mark.parametrize("kwargs, message", [
    (dict(base_rate=0.7, schedule="cubic"), "unknown token-pruning schedule"),
    (dict(base_rate=None, schedule="explicit"), "needs keep_ratios"),
    (dict(base_rate=None, schedule="explicit", keep_ratios=[0.5, 0.6, 0.2]), "must not increase"),
    (dict(base_rate=None, schedule="explicit", keep_ratios=[0.5, 0.2]), "one ratio per location"),
    (dict(base_rate=1.3), r"base_rate must be in \(0, 1\]"),
    (dict(base_rate=0.7, keep_ratios=[0.5, 0.4, 0.3]), "only used by schedule 'explicit'"),
    (dict(base_rate=0.7, locations=(3, 6, 12)), "beyond the model's 12 blocks"),
    (dict(base_rate=0.7, locations=(6, 3)), "increasing"),
])
def test_bad_configurations_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        dynamicvit.attach(tiny_vit(), **kwargs)


def test_attach_keeps_timm_keys_and_adds_official_predictor_keys():
    plain = tiny_vit()
    plain_keys = set(plain.state_dict())
    model = dynamicvit.attach(tiny_vit(), 0.7)
    keys = set(model.state_dict())
    assert plain_keys <= keys
    extra = sorted(keys - plain_keys)
    assert "score_predictor.0.in_conv.0.weight" in extra  # LayerNorm
    assert "score_predictor.2.out_conv.4.bias" in extra  # last Linear -> 2 (keep, drop)
    assert all(k.startswith("score_predictor.") for k in extra)
    assert model.vitprune_dynamicvit == {"base_rate": 0.7, "schedule": "geometric", "keep_ratios": None,
                                            "locations": [3, 6, 9], "allow_empty_stage": False}


def test_tokens_per_block_include_cls():
    model = dynamicvit.attach(tiny_vit(), 0.7)  # 64 patches -> 44, 31, 21
    assert dynamicvit.tokens_per_block(model) == [65] * 3 + [45] * 3 + [32] * 3 + [22] * 3
    assert dynamicvit.tokens_per_block(tiny_vit()) == [65] * 12


def test_config_reattaches_to_a_fresh_model_and_reattach_changes_schedule():
    model = dynamicvit.attach(tiny_vit(), 0.6, "linear")
    fresh = dynamicvit.attach(tiny_vit(), **model.vitprune_dynamicvit)
    assert dynamicvit.describe(fresh)["keep_counts"] == dynamicvit.describe(model)["keep_counts"] == [38, 25, 12]
    predictors = model.score_predictor
    dynamicvit.attach(model, 0.9)  # same locations: schedule changes, predictors stay
    assert model.score_predictor is predictors
    assert dynamicvit.model_keep_counts(model) == [57, 51, 46]
    with pytest.raises(UserError, match="already has token pruning"):
        dynamicvit.attach(model, 0.9, locations=(2, 4))


# ---------------------------------------------------------------- forwards


def _spread_scores(model):
    """Freshly initialised predictors score every token ~log(0.5) with gaps near float noise;
    larger weights separate the scores so both forwards must pick the same tokens."""
    torch.manual_seed(99)
    for predictor in model.score_predictor:
        for layer in predictor.out_conv:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.5)


def _masked_and_gathered(model, images):
    """Training-mode masked forward with top-k decisions vs the eval-mode gathered forward."""
    _spread_scores(model)
    model.train()
    feats, aux = dynamicvit._masked_features(model, images, topk=True)
    model._tp_aux = aux  # the masked layout's average pooling reads the final mask
    masked = model.forward_head(feats)
    model.eval()
    with torch.no_grad():
        gathered = model(images)
    _, stage_masks = dynamicvit.kept_token_masks(model, images)
    return masked, gathered, aux, stage_masks


@pytest.mark.parametrize("rate", [0.9, 0.7, 0.5])
def test_masked_forward_equals_gathered_forward_with_fixed_decisions(rate):
    # Same kept set (deterministic top-k in the masked forward) => same logits; the masked
    # attention's eps term (1e-6, official) bounds the difference: tolerance 1e-5.
    model = dynamicvit.attach(tiny_vit(seed=1), rate)
    images = torch.randn(4, 3, 32, 32)
    masked, gathered, aux, stage_masks = _masked_and_gathered(model, images)
    assert torch.equal(stage_masks[-1], aux.mask.bool())
    assert [int(m.sum(1)[0]) for m in stage_masks] == dynamicvit.model_keep_counts(model)
    torch.testing.assert_close(masked, gathered, atol=1e-5, rtol=0)


def test_masked_equals_gathered_on_block_pruned_attention_and_avg_pool():
    # fewer heads with the head size kept (block pruning's shapes), one block with no attention,
    # and average pooling over the kept patch tokens instead of CLS
    model = tiny_vit(seed=2, global_pool="avg")
    model.blocks[4].attn = Attention(32, num_heads=2, attn_head_dim=8, qkv_bias=True)
    model.blocks[7].attn = ZeroAttention()
    model.blocks[10].attn = Attention(32, num_heads=1, attn_head_dim=8, qkv_bias=True)
    dynamicvit.attach(model, 0.6)
    images = torch.randn(3, 3, 32, 32)
    masked, gathered, _, _ = _masked_and_gathered(model, images)
    torch.testing.assert_close(masked, gathered, atol=1e-5, rtol=0)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_topk_training_forward_is_the_masked_one_at_gathered_cost(global_pool):
    """Training with top-k decisions runs the gathered forward: same logits, same loss terms and
    the same backbone gradients as the masked forward with those decisions."""
    model = dynamicvit.attach(tiny_vit(seed=3, global_pool=global_pool), 0.6)
    _spread_scores(model)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    teacher = tiny_vit(seed=3, global_pool=global_pool).eval()
    loss_fn = dynamicvit_loss.make_loss_fn()
    model.train()
    dynamicvit.set_decision_mode(model, "topk")
    loss, logits, logs = loss_fn(model, images, targets, teacher)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert not any(n.startswith("score_predictor") for n in grads)
    model.zero_grad()
    dynamicvit.set_decision_mode(model, "gumbel")
    with torch.no_grad():  # what the masked forward gives with the same (top-k) decisions
        feats, aux = dynamicvit._masked_features(model, images, topk=True)
        model._tp_aux = aux
        torch.testing.assert_close(model.forward_head(feats), logits.detach(), atol=1e-5, rtol=0)
    model.forward_features = types.MethodType(_masked_topk_features, model)  # this instance only
    masked_loss, _, masked_logs = loss_fn(model, images, targets, teacher)
    masked_loss.backward()
    assert masked_logs["token_mse"] == pytest.approx(logs["token_mse"], rel=1e-4)
    assert masked_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-3)


def _masked_topk_features(model, x, **_):
    feats, model._tp_aux = dynamicvit._masked_features(model, x, topk=True)
    return feats


def test_token_pruning_on_a_block_pruned_model():
    # block_pruning's dense removal (fewer heads and MLP channels), then token pruning on top
    from vitprune.methods import block_pruning

    model = block_pruning.prune_to(tiny_vit(seed=9), keep_heads=0.5, keep_mlp=0.5)
    dynamicvit.attach(model, 0.7)
    assert model.blocks[5].attn.num_heads == 2
    masked, gathered, _, _ = _masked_and_gathered(model, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(masked, gathered, atol=1e-5, rtol=0)


def test_unpruned_blocks_match_plain_timm_model():
    # base_rate 1.0 keeps every token: logits identical to the model before attach
    plain = tiny_vit(seed=3).eval()
    pruned = dynamicvit.attach(tiny_vit(seed=3), 1.0).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images), plain(images), atol=1e-6, rtol=0)


def test_empty_stage_allowed_runs_on_cls_alone():
    model = dynamicvit.attach(tiny_vit(), 0.4, "linear", allow_empty_stage=True)  # 25, 12, 0 of 64
    assert dynamicvit.tokens_per_block(model)[-3:] == [1, 1, 1]
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()
    model.train()
    loss, logits, logs = dynamicvit_loss.make_loss_fn()(model, images, torch.tensor([0, 1]), None)
    assert torch.isfinite(loss) and torch.isfinite(logits).all()


def test_gumbel_decisions_are_cumulative_and_train_the_predictors():
    model = dynamicvit.attach(tiny_vit(seed=4), 0.7).train()
    teacher = tiny_vit(seed=4).eval()
    images = torch.randn(4, 3, 32, 32)
    loss, logits, logs = dynamicvit_loss.make_loss_fn()(model, images, torch.tensor([0, 1, 2, 3]), teacher)
    assert set(logs) >= {"ce", "ratio_loss", "kl", "token_mse", "keep_frac_0", "keep_frac_2"}
    model.train()
    model(images)
    aux = dynamicvit_loss.pop_aux(model)
    for earlier, later in zip(aux.decisions, aux.decisions[1:]):
        assert bool((later <= earlier).all())  # a dropped token never comes back
    loss.backward()
    for predictor in model.score_predictor:
        assert predictor.out_conv[4].weight.grad.abs().sum() > 0


def test_ratio_loss_teaches_the_predictors_the_keep_ratio():
    # only the predictors learn, only the keep-ratio term: the kept fraction moves to the target.
    # Fresh predictors keep ~1/2 per stage (0.5, 0.25, 0.125); targets are 0.8, 0.64, 0.51.
    model = dynamicvit.attach(tiny_vit(seed=5, depth=4), 0.8, locations=(1, 2, 3)).train()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("score_predictor."))
    loss_fn = dynamicvit_loss.make_loss_fn(clf_weight=0.0, ratio_weight=1.0, distill_weight=0.0)
    opt = torch.optim.Adam(dynamicvit.predictor_parameters(model), lr=1e-2)
    images = torch.randn(8, 3, 32, 32)
    first = None
    for _ in range(30):
        loss, _, logs = loss_fn(model, images, torch.zeros(8, dtype=torch.long), None)
        first = logs["ratio_loss"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model(images)
    fractions = [float(d.detach().mean()) for d in dynamicvit_loss.pop_aux(model).decisions]
    assert first > 0.05
    assert fractions == pytest.approx([0.8, 0.64, 0.51], abs=0.12)


def test_keep_prior_starts_the_decisions_at_the_target_ratios():
    model = dynamicvit.attach(tiny_vit(seed=10), 0.7)  # 0.7, 0.49, 0.343: conditional 0.7 per stage
    dynamicvit.init_keep_prior(model)
    model.train()
    torch.manual_seed(0)
    model(torch.randn(16, 3, 32, 32))
    fractions = [float(d.detach().mean()) for d in dynamicvit_loss.pop_aux(model).decisions]
    assert fractions == pytest.approx([0.7, 0.49, 0.343], abs=0.06)


def test_teacher_with_token_pruning_is_refused():
    model = dynamicvit.attach(tiny_vit(), 0.7).train()
    teacher = dynamicvit.attach(tiny_vit(), 0.7).eval()
    with pytest.raises(UserError, match="unpruned"):
        dynamicvit_loss.make_loss_fn()(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), teacher)


def test_param_groups_and_frozen_backbone_phase():
    model = dynamicvit.attach(tiny_vit(), 0.7)
    groups = dynamicvit.param_groups(model, backbone_lr_scale=0.01)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.01]
    predictor_ids = {id(p) for p in model.score_predictor.parameters()}
    assert {id(p) for p in groups[0]["params"]} == predictor_ids
    backbone_ids = {id(p) for p in groups[1]["params"]}
    assert not backbone_ids & predictor_ids
    assert id(model.cls_token) not in backbone_ids and id(model.pos_embed) not in backbone_ids  # frozen (official)
    assert id(model.blocks[0].attn.qkv.weight) in backbone_ids
    hook = dynamicvit.frozen_backbone_hook(model, frozen_steps=2)
    model.train()
    loss, _, _ = dynamicvit_loss.make_loss_fn()(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), None)
    loss.backward()
    hook(1, 10, model)  # still frozen: backbone gradients dropped, predictors keep theirs
    assert model.blocks[5].mlp.fc1.weight.grad is None
    assert model.score_predictor[0].in_conv[1].weight.grad is not None
    loss, _, _ = dynamicvit_loss.make_loss_fn()(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), None)
    loss.backward()
    hook(2, 10, model)  # phase over
    assert model.blocks[5].mlp.fc1.weight.grad is not None


def test_backbone_trains_on_the_inference_masks_after_the_frozen_phase():
    model = dynamicvit.attach(tiny_vit(), 0.7).train()
    counts = dynamicvit.model_keep_counts(model)
    hook = dynamicvit.frozen_backbone_hook(model, frozen_steps=2, then_decisions="topk")
    x = torch.randn(4, 3, 32, 32)
    hook(0, 10, model)  # the predictors learn from Gumbel samples while the backbone is frozen
    model(x)
    assert dynamicvit_loss.pop_aux(model).decisions[0].requires_grad
    hook(1, 10, model)  # the next step trains the backbone: exact top-k masks, predictors fixed
    model.zero_grad()
    loss, _, _ = dynamicvit_loss.make_loss_fn()(model, x, torch.tensor([0, 1, 2, 3]), None)
    loss.backward()
    assert model.score_predictor[0].in_conv[1].weight.grad is None
    assert model.blocks[5].mlp.fc1.weight.grad is not None
    model(x)
    decisions = dynamicvit_loss.pop_aux(model).decisions
    assert [d.sum(dim=1).tolist() for d in decisions] == [[float(c)] * 4 for c in counts]
    with pytest.raises(UserError, match="frozen_epochs > 0"):
        dynamicvit.frozen_backbone_hook(model, frozen_steps=0, then_decisions="topk")


# ---------------------------------------------------------------- compute


def _macs(model):
    """MACs at batch 1, eval mode (the gathered model), predictors included."""
    from vitprune import measure

    return measure.count(model, img_size=32)["macs"]


def test_macs_fall_monotonically_with_base_rate():
    full = _macs(tiny_vit())
    macs = [_macs(dynamicvit.attach(tiny_vit(), rate)) for rate in (0.9, 0.7, 0.5, 0.4)]
    assert all(a > b for a, b in zip(macs, macs[1:]))
    assert macs[0] < full
    assert macs[1] < 0.75 * full  # rho = 0.7: at least 25 % fewer MACs on this tiny model


def test_deit_base_plus_predictors_has_the_studys_89_4m_params():
    import timm

    model = timm.create_model("deit_base_patch16_224", pretrained=False)
    base = sum(p.numel() for p in model.parameters())
    dynamicvit.attach(model, 0.7)
    total = sum(p.numel() for p in model.parameters())
    # per predictor: LN 2*768 + 768*768+768 + 768*384+384 + 384*192+192 + 192*2+2
    assert total - base == 3 * 961_730
    assert base == 86_567_656
    assert total == pytest.approx(89.4e6, abs=0.1e6)  # 89.45 M; the study (truncating) reports 89.4 M


# ---------------------------------------------------------------- official checkpoint layout


def _official_layout(model):
    """What the official main_dynamic_vit.py writes: {'model': weights, 'optimizer', 'epoch', 'args'};
    weights named as in its vit.py (DeiT names + score_predictor.<i>.in_conv/out_conv)."""
    names = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(12):
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                     "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias"):
            names.append(f"blocks.{i}.{part}")
    names += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    for s in range(3):
        for part in ("in_conv.0.weight", "in_conv.0.bias", "in_conv.1.weight", "in_conv.1.bias",
                     "out_conv.0.weight", "out_conv.0.bias", "out_conv.2.weight", "out_conv.2.bias",
                     "out_conv.4.weight", "out_conv.4.bias"):
            names.append(f"score_predictor.{s}.{part}")
    own = model.state_dict()
    assert sorted(names) == sorted(own)  # our layout is the official one, key for key
    weights = {name: own[name].clone() for name in names}
    return {"model": weights, "optimizer": {}, "epoch": 29,
            "args": argparse.Namespace(base_rate=0.7, arch="deit_small")}


def test_official_checkpoint_round_trip(tmp_path):
    source = dynamicvit.attach(tiny_vit(seed=6), 0.7)
    torch.nn.init.normal_(source.score_predictor[1].out_conv[4].weight)  # not the default init
    path = tmp_path / "dynamicvit.pth"
    torch.save(_official_layout(source), path)
    target = dynamicvit.attach(tiny_vit(seed=7), 0.7)
    dynamicvit_io.load_official_checkpoint(target, path)
    images = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images), atol=0, rtol=0)
    # our writer produces the same layout; DDP's module. prefix is understood
    ours = dynamicvit_io.save_official_checkpoint(source, tmp_path / "ours.pth")
    assert sorted(torch.load(ours)["model"]) == sorted(_official_layout(source)["model"])
    prefixed = {"model": {"module." + k: v for k, v in source.state_dict().items()}}
    dynamicvit_io.load_official_checkpoint(dynamicvit.attach(tiny_vit(seed=8), 0.7), prefixed)


def test_official_checkpoint_mismatch_is_a_clear_error(tmp_path):
    wide = dynamicvit.attach(tiny_vit(embed_dim=48, num_heads=4), 0.7)
    with pytest.raises(UserError, match="mis-shaped: cls_token"):
        dynamicvit_io.load_official_checkpoint(dynamicvit.attach(tiny_vit(), 0.7), {"model": wide.state_dict()})
    plain = tiny_vit().state_dict()  # a plain DeiT file: predictors missing
    with pytest.raises(UserError, match="missing: score_predictor.0"):
        dynamicvit_io.load_official_checkpoint(dynamicvit.attach(tiny_vit(), 0.7), plain)
    dynamicvit_io.load_official_checkpoint(dynamicvit.attach(tiny_vit(), 0.7), plain, strict=False)
    with pytest.raises(UserError, match="does not exist"):
        dynamicvit_io.load_official_checkpoint(dynamicvit.attach(tiny_vit(), 0.7), tmp_path / "nope.pth")


# ---------------------------------------------------------------- notebook 02 (smoke profile)


@pytest.mark.notebook
def test_notebook_02_smoke(smoke_runs):
    from vitprune import models
    from vitprune.study import results

    run_dir = smoke_run(smoke_runs, "02_token_pruning", base_rate=0.7)
    m = results.read_metrics(run_dir)
    assert m["method"] == "dynamicvit" and m["base_rate"] == 0.7 and m["schedule"] == "geometric"
    assert m["keep_counts"] == token_schedule.keep_counts(49, 0.7)  # vit_fmnist: 7 x 7 patches
    assert m["tokens_per_block"][-1] == 1 + m["keep_counts"][-1]
    assert m["flops"] == 2 * m["macs"] and m["macs"] < m["baseline_macs"]
    assert 0.0 <= m["top1"] <= 100.0 and m["eval_samples"] == 60
    # the kept-token arrays notebook 05 draws: one cumulative mask per stage over the 7 x 7 grid
    with np.load(run_dir / "kept_tokens.npz") as kept:
        assert kept["images"].shape == (2, 28, 28, 3) and kept["masks"].shape == (3, 2, 49)
        assert kept["masks"].sum(axis=2).tolist() == [[k, k] for k in m["keep_counts"]]
        assert (kept["masks"][1:] <= kept["masks"][:-1]).all()
    # the saved model re-attaches its pruning from the checkpoint and runs gathered
    model = models.load_checkpoint(run_dir / "model.pt")
    assert model.vitprune_dynamicvit["base_rate"] == 0.7
    assert dynamicvit.tokens_per_block(model) == m["tokens_per_block"]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name, released_gmacs", [("deit_base_patch16_224", 11.4), ("deit_small_patch16_224", 2.9)])
def test_gathered_macs_match_the_official_model_zoo(name, released_gmacs):
    """The official repo's model zoo (README) lists DynamicViT-DeiT-B/0.7 at 11.4 G and -DeiT-S/0.7
    at 2.9 G, counted with fvcore on the eval (gathered) model, predictors included, and printed
    truncated to one decimal (ours: 11.49 and 2.99). The paper's 11.2 G for DeiT-B lies between our
    counts without (11.08) and with (11.49) the predictors and is not reproducible from the
    released code."""
    import timm
    from vitprune import measure

    model = dynamicvit.attach(timm.create_model(name, pretrained=False), 0.7).eval()
    gmacs = measure.count(model)["macs"] / 1e9
    assert released_gmacs <= gmacs < released_gmacs + 0.1


@pytest.mark.slow
def test_notebook_02_rerun_that_resumes_past_the_handoff_still_writes_it(smoke_runs, tmp_path):
    """A re-run with the same training settings (here: another bench_repeats, or a second Run All
    in the lab) resumes from the finished per-epoch checkpoint and trains no step, so it takes no
    new hand-off save: the one kept beside that checkpoint becomes handoff.pt again."""
    import shutil

    from vitprune.study import pipeline

    runs = tmp_path / "runs"
    shutil.copytree(smoke_runs.parent, runs)
    pipeline.run_profile("smoke", only="02_token_pruning", overrides={"bench_repeats": 3},
                         runs_root=str(runs))
    run_dir = smoke_run(runs / "smoke", "02_token_pruning", base_rate=0.7)
    assert (run_dir / "handoff.pt").is_file() and json.loads((run_dir / "metrics.json").read_text())["budget"]["steps"] > 0
