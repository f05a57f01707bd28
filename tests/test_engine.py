"""engine: schedule, losses, augmentation, hooks, resume, NaN guard, evaluation, 2 processes,
and the smoke run of notebook 01."""

import json
import math
import os
import shutil
from dataclasses import fields
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import engine_data
from vitprune import measure, models
from vitprune.errors import UserError
from vitprune.data.tensors import random_crop_flip
from vitprune.train import engine, recipe
from vitprune.train.recipe import Hooks, TrainConfig

HERE = Path(__file__).resolve().parent


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create_model("vit_fmnist", embed_dim=32, depth=2, num_heads=2, stem_chans=[8, 16])


def run(model, train_set, eval_set=None, **kw):
    """engine.train with a small default TrainConfig; keywords go to the config, the hooks or train."""
    settings = dict(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.5, seed=0, progress=False)
    settings.update({k: kw.pop(k) for k in list(kw) if k in {f.name for f in fields(TrainConfig)}})
    hooks = Hooks(**{k: kw.pop(k) for k in list(kw) if k in {f.name for f in fields(Hooks)}})
    return engine.train(model, train_set, TrainConfig(**settings), eval_set, hooks=hooks, **kw)


# --------------------------------------------------------------------------- pure functions


def test_warmup_cosine_schedule():
    total, warm = 100, 10
    assert recipe.warmup_cosine(0, total, warm) == pytest.approx(0.1)
    assert recipe.warmup_cosine(9, total, warm) == pytest.approx(1.0)
    assert recipe.warmup_cosine(10, total, warm) == pytest.approx(1.0)
    assert recipe.warmup_cosine(55, total, warm) == pytest.approx(0.5)
    assert recipe.warmup_cosine(100, total, warm) == pytest.approx(0.0)
    assert recipe.warmup_cosine(100, total, warm, min_lr_ratio=0.1) == pytest.approx(0.1)
    values = [recipe.warmup_cosine(s, total, warm) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_distillation_loss():
    s = torch.randn(4, 10)
    assert recipe.distillation_loss(s, s.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(4, 10)
    kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True)
    assert recipe.distillation_loss(s, t, 1.0).item() == pytest.approx(kl.item(), rel=1e-5)
    kl4 = torch.nn.functional.kl_div((s / 4).log_softmax(-1), (t / 4).log_softmax(-1), reduction="batchmean",
                                     log_target=True)
    assert recipe.distillation_loss(s, t, 4.0).item() == pytest.approx(16 * kl4.item(), rel=1e-5)


def test_random_crop_flip_shifts_and_flips():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    assert torch.equal(random_crop_flip(x, pad=0, flip=False), x)
    torch.manual_seed(0)
    out = random_crop_flip(x, pad=2, flip=True)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(2):  # every output is some 6x6 window of the padded image, maybe mirrored
        windows = [padded[i, :, a:a + 6, b:b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_param_groups_split_decay_and_scale():
    model = tiny_model()
    groups = recipe.build_param_groups(model, 0.05)
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert all(p.ndim > 1 for p in decayed)
    assert not any(p is model.pos_embed or p is model.cls_token for p in decayed)
    head = list(model.head.parameters())
    rest = [p for p in model.parameters() if all(p is not h for h in head)]
    with pytest.raises(UserError, match="twice"):
        recipe.build_param_groups(model, 0.05, [{"params": head}, {"params": head}])
    groups = recipe.build_param_groups(model, 0.05, [{"params": head, "lr_scale": 2.0},
                                                     {"params": rest, "lr_scale": 0.5}])
    assert {g["lr_scale"] for g in groups} == {2.0, 0.5}


# --------------------------------------------------------------------------- train


def test_hooks_and_lr_scale_zero_freezes():
    train_set, _ = engine_data.tensor_sets(train_per_class=4)  # 40 images -> 2 full batches of 16
    model = tiny_model()
    head = list(model.head.parameters())
    rest = [p for p in model.parameters() if all(p is not h for h in head)]
    before_rest = [p.detach().clone() for p in rest]
    before_head = [p.detach().clone() for p in head]
    calls = []
    history = run(model, train_set, param_groups=[{"params": head, "lr_scale": 1.0},
                                                  {"params": rest, "lr_scale": 0.0}],
                  on_step=lambda step, total, m: calls.append((step, total, m is model)))
    assert calls == [(s, 4, True) for s in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(before_rest, rest))
    assert not all(torch.equal(a, b) for a, b in zip(before_head, head))
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in history)


@pytest.mark.parametrize("mixed_precision", ["bf16", "no"])
def test_train_and_evaluate_hand_the_model_back_bare(mixed_precision):
    """accelerate's prepare wraps the caller's model.forward in autocast (one process); the
    engine removes it, so a model timed after training runs at the precision the timing says."""
    train_set, eval_set = engine_data.tensor_sets(train_per_class=4)
    model, teacher = tiny_model(), tiny_model(1)
    run(model, train_set, epochs=1, mixed_precision=mixed_precision, teacher=teacher, distill_weight=0.5)
    assert not measure.autocast_wrapped(model) and "_is_accelerate_prepared" not in vars(model)
    assert all(p.requires_grad for p in teacher.parameters())  # frozen while it taught, not after
    assert model.forward.__func__ is type(model).forward
    with torch.no_grad():
        assert model(eval_set.tensors[0][:2]).dtype == torch.float32
    engine.evaluate(model, eval_set, batch_size=8, progress=False, mixed_precision=mixed_precision)
    assert not measure.autocast_wrapped(model)
    # a second training of the same object is prepared again (accelerate skips "prepared" models)
    run(model, train_set, epochs=1, mixed_precision=mixed_precision)
    assert not measure.autocast_wrapped(model)


def test_handed_back_restores_device_and_own_attributes():
    model = tiny_model()
    model.__dict__["_original_forward"] = "the caller's"
    with engine.handed_back(model):
        model.forward = lambda x: x
        model._is_accelerate_prepared = True
    assert vars(model)["_original_forward"] == "the caller's"
    assert "forward" not in vars(model) and "_is_accelerate_prepared" not in vars(model)
    # a model that came on one device goes back there (as one prepared onto cuda:0 comes back to the CPU);
    # "meta" stands in for the caller's device on a machine with only a CPU
    on_meta = tiny_model().to("meta")
    with engine.handed_back(on_meta):
        on_meta.to_empty(device="cpu")
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_handoff_saves_the_model_after_a_fraction_of_the_steps(tmp_path):
    train_set, _ = engine_data.tensor_sets(train_per_class=4)  # 40 images: 2 steps per epoch at batch 16
    assert [recipe.handoff_step(f, 4) for f in (0.01, 0.25, 0.6, 1.0)] == [1, 1, 2, 4]
    model = tiny_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, train_set, handoff=(0.25, tmp_path / "one.pt"))  # after 1 of 2 x 2 steps
    after_one = torch.load(tmp_path / "one.pt")
    moved = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert moved(after_one, start) and moved(after_one, model.state_dict())
    last = tiny_model()
    run(last, train_set, handoff=(1.0, tmp_path / "last.pt"))  # the end of training
    assert not moved(torch.load(tmp_path / "last.pt"), last.state_dict())
    with pytest.raises(UserError, match="hand-off fraction must be in"):
        run(tiny_model(), train_set, handoff=(1.5, tmp_path / "never.pt"))


def test_live_curves_go_to_tensorboard_in_the_log_dir(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_set, eval_set = engine_data.tensor_sets(train_per_class=4, eval_per_class=1)
    run(tiny_model(), train_set, eval_set, log_dir=str(tmp_path / "tb"), trace_every=1, desc="DynamicViT rho=0.7")
    (run_dir,) = (tmp_path / "tb").iterdir()
    assert run_dir.name == "DynamicViT_rho=0.7"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/eval_top1"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # optimizer steps: 2 epochs x 2
    assert len(events.Scalars("epoch/eval_top1")) == 2


def test_custom_loss_fn_and_distillation():
    train_set, _ = engine_data.tensor_sets(train_per_class=4)
    seen = []

    def loss_fn(model, images, targets, teacher):
        seen.append(teacher is not None and not teacher.training)
        logits = model(images)
        return nn.functional.cross_entropy(logits, targets), logits, {"extra": 1.5}

    history = run(tiny_model(), train_set, teacher=tiny_model(1), loss_fn=loss_fn, epochs=1)
    assert seen and all(seen)
    assert history[0]["train_extra"] == pytest.approx(1.5)
    history = run(tiny_model(), train_set, teacher=tiny_model(1), distill_weight=0.5, epochs=1)
    assert history[0]["train_distill"] > 0


def test_nan_loss_names_the_step():
    train_set, _ = engine_data.tensor_sets(train_per_class=4)

    def loss_fn(model, images, targets, teacher):
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, targets)
        if loss_fn.calls == 2:
            loss = loss * float("nan")
        loss_fn.calls += 1
        return loss, logits, {}
    loss_fn.calls = 0
    with pytest.raises(UserError, match=r"loss is nan at step 2 \(epoch 2, batch 0\)"):
        run(tiny_model(), train_set, loss_fn=loss_fn)


class Interrupt(Exception):
    pass


def test_resume_after_interrupted_epoch_retraces_the_run(tmp_path):
    train_set, eval_set = engine_data.tensor_sets(train_per_class=4)
    reference = tiny_model()
    ref_history = run(reference, train_set, eval_set, epochs=3, batch_size=8, checkpoint_dir=tmp_path / "ref",
                      batch_transform=random_crop_flip)

    def stop_mid_epoch_2(step, total, model):
        if step == 7:  # 5 steps per epoch: inside epoch 2
            raise Interrupt

    model = tiny_model()
    ckpt = tmp_path / "run"
    with pytest.raises(Interrupt):
        run(model, train_set, eval_set, epochs=3, batch_size=8, checkpoint_dir=ckpt, on_step=stop_mid_epoch_2,
            batch_transform=random_crop_flip)
    assert engine.load_train_state(ckpt)["epoch"] == 1
    steps = []
    resumed = tiny_model(seed=5)  # different init: everything must come from the checkpoint
    history = run(resumed, train_set, eval_set, epochs=3, batch_size=8, checkpoint_dir=ckpt,
                  on_step=lambda s, t, m: steps.append(s), batch_transform=random_crop_flip)
    assert steps == list(range(5, 15))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(history, ref_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["eval_top1"] == pytest.approx(b["eval_top1"])
    for (name, p), q in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
    # a finished run resumes to "nothing left to do"; a changed schedule is refused
    assert len(run(tiny_model(), train_set, epochs=3, batch_size=8, checkpoint_dir=ckpt)) == 3
    with pytest.raises(UserError, match="resume=False"):
        run(tiny_model(), train_set, epochs=4, batch_size=8, checkpoint_dir=ckpt)


class AugmentedInWorkers(torch.utils.data.Dataset):
    """Per-image augmentation drawn in the loader workers from torch and numpy, as timm's transforms do."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return image + 0.3 * torch.randn_like(image) + 0.3 * float(np.random.rand()), label


def test_resume_retraces_the_run_with_loader_workers_and_mixup(tmp_path):
    """Loader workers seeded once (persistent workers) and Mixup on numpy's unseeded generator made a
    resumed run differ from the uninterrupted one; both are now seeded per epoch (recipe.seed_epoch)."""
    train_set = AugmentedInWorkers(engine_data.tensor_sets(train_per_class=4)[0])  # 40 images: 5 steps of 8
    options = dict(epochs=3, batch_size=8, num_workers=2, mixup_alpha=0.8, cutmix_alpha=1.0, lr=3e-3)
    reference = tiny_model()
    ref_history = run(reference, train_set, checkpoint_dir=tmp_path / "ref", **options)

    def stop_in_epoch_2(step, total, model):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny_model(), train_set, checkpoint_dir=tmp_path / "run", on_step=stop_in_epoch_2, **options)
    resumed = tiny_model(seed=5)
    history = run(resumed, train_set, checkpoint_dir=tmp_path / "run", **options)
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in ref_history], rel=1e-5)
    for (name, p), q in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


# --------------------------------------------------------------------------- evaluate


class FixedLogits(nn.Module):
    """Returns preset logits for the i-th image, identified by its first pixel."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def test_evaluate_metrics():
    logits = torch.tensor([[9., 1, 0, 2, 3, 4],   # true 0: top-1 hit
                           [0., 9, 1, 2, 3, 4],   # true 1: hit
                           [9., 8, 0, 7, 6, 5],   # true 2: miss, not in top-5
                           [5., 4, 3, 9, 2, 1]])  # true 2: miss, rank 5 -> top-5 hit
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    data = torch.utils.data.TensorDataset(images, torch.tensor([0, 1, 2, 2]))
    res = engine.evaluate(FixedLogits(logits), data, batch_size=3, class_names=list("abcdef"), progress=False)
    assert res["num_samples"] == 4
    assert res["top1"] == pytest.approx(50.0)
    assert res["top5"] == pytest.approx(75.0)
    assert res["per_class_accuracy"] == {"a": 100.0, "b": 100.0, "c": 0.0, "d": None, "e": None, "f": None}
    cm = res["confusion_matrix"]
    assert cm[0][0] == 1 and cm[1][1] == 1 and cm[2][0] == 1 and cm[2][3] == 1 and sum(map(sum, cm)) == 4


def _launch(nproc: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    if nproc == 1:
        cmd = [sys.executable, str(HERE / "dist_train_eval.py"), str(out)]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", str(HERE / "dist_train_eval.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_evaluate_like_one(tmp_path):
    two = _launch(2, tmp_path / "two.json")
    assert two["num_processes"] == 2 and two["num_samples"] == 110
    # the model trained by the 2-process (DDP) run, evaluated in this single process
    sys.path.insert(0, str(HERE))
    from dist_train_eval import linear_model

    model = linear_model()
    model.load_state_dict(torch.load(str(tmp_path / "two.json") + ".pt"))
    _, eval_set = engine_data.tensor_sets(train_per_class=8, eval_per_class=11)
    one = engine.evaluate(model, eval_set, batch_size=16, progress=False)
    assert one["num_samples"] == 110
    assert one["top1"] == pytest.approx(two["top1"]) and one["top5"] == pytest.approx(two["top5"])
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert len({max(range(10), key=lambda j: row[j]) for row in one["confusion_matrix"]}) > 1, \
        "degenerate model: predicts one class, the comparison would prove little"


# --------------------------------------------------------------------------- notebook 01 (smoke)


@pytest.mark.notebook
def test_notebook_01_smoke(smoke_runs):
    from vitprune import data
    from vitprune.study import results

    run_dir = smoke_runs / "01_deit_baseline"
    metrics = results.read_metrics(run_dir)
    for key in ("method", "label", "model_name", "img_size", "params", "macs", "flops", "top1", "top5",
                "eval_samples", "train_wall_time_s", "history"):
        assert key in metrics, key
    assert metrics["method"] == "baseline" and metrics["model_name"] == "vit_fmnist"
    assert metrics["flops"] == 2 * metrics["macs"] and metrics["params"] > 0
    assert metrics["eval_samples"] == 60 and len(metrics["history"]) >= 1
    assert sum(map(sum, metrics["confusion_matrix"])) == 60
    # the saved model re-evaluates to the recorded accuracy
    model = models.load_checkpoint(run_dir / "model.pt")
    cache = results.read_metrics(smoke_runs / "00_data_cache")["cache_path"]
    test = data.load_cache(cache)["test"]
    ev = engine.evaluate(model, data.TorchView(test, data.transforms_for(model, train=False)), 64, progress=False)
    assert ev["top1"] == pytest.approx(metrics["top1"])
