"""The ImageNet profile rehearsed on CPU (marked `rehearsal`: `make test-full`, which CI runs).

A tiny ImageFolder with ImageNet-1k's 1000 wnid class folders (2 train / 1 val JPEG each, some
CMYK and greyscale) and a random DeiT-Tiny in the official DeiT layout {"model": state_dict}
go through all six notebooks of `params/imagenet/` with small overrides, as a researcher
would run them; then notebook 01 trains on 1 and on 2 processes (gloo) and the runs agree."""

import json

import pytest

import imagenet_rehearsal
from vitprune import models
from vitprune.methods import dynamicvit_io
from vitprune.study import config, pipeline, results
from vitprune.train import hardware

pytestmark = pytest.mark.rehearsal
TOKEN_RUN = "02_token_pruning/base_rate_0.7__seed_0"

IMG = 64  # DeiT-Tiny at 64x64: 16 patches + CLS, so the study's lowest base rate still keeps a token
# at block 9 (floor(16 x 0.4^3) = 1; at 48x48 its 9 patches keep none), and 1000 classes train in seconds
# one torch thread: on a loaded 2-core machine two threads per process measured 3-15 s per DynamicViT
# step against 0.4-0.65 s with one (OpenMP spin-waiting when oversubscribed)
SMALL = {"epochs": 1, "batch_size": 32, "eval_batch_size": 250, "num_workers": 0, "threads": 1,
         "mixed_precision": "no", "frozen_epochs": 0.5, "update_every": 5, "bench_batch_size": 4,
         "bench_repeats": 2, "audit_models": False, "num_viz": 2, "samples_per_class": 1,
         "max_grid_classes": 4, "edge_eval_per_class": 1}  # the ImageNet-layout fixture holds 1 image per class


def declared_only(overrides: dict, *notebooks: str) -> dict:
    """The overrides these notebooks declare (-p of an undeclared key is an error)."""
    declared = set().union(*(config.declared_parameters(nb) for nb in notebooks))
    return {k: v for k, v in overrides.items() if k in declared}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    folder = imagenet_rehearsal.write_imagefolder(root / "imagenet", size=IMG + 4)
    ckpt = imagenet_rehearsal.write_deit_checkpoint(root / "deit_tiny_patch16_224.pth", img_size=IMG)
    data = {"source": "imagefolder", "imagefolder_dir": str(folder), "classes_file": "imagenet",
            "train_fraction": 0.0, "num_proc": 1}
    model = {"model_name": "deit_tiny_patch16_224", "pretrained": False, "checkpoint": str(ckpt), "img_size": IMG}
    return root, {**data, **model, **SMALL}


@pytest.fixture(scope="module")
def profile_run(inputs):
    root, overrides = inputs
    runs = root / "runs"
    return runs, pipeline.run_profile("imagenet", overrides=overrides, runs_root=str(runs), study=True)


def test_imagenet_profile_end_to_end(profile_run):
    runs, summaries = profile_run
    # the study's four base rates; --study adds a control of every fine-tune recipe (off by default)
    assert [s["run"] for s in summaries] == [
        "00_data_cache", "01_deit_baseline", *[f"02_token_pruning/base_rate_{r}__seed_0" for r in (0.7, 0.6, 0.5, 0.4)],
        *[f"02_token_pruning/{point}__seed_0" for point in ("control", "evit", "tome", "plain_control")],
        "03_block_pruning/seed_0", "03_block_pruning/control__seed_0",
        "04_combination/seed_0", "04_combination/control__seed_0", "05_analysis"]
    base = runs / "imagenet"
    cache = results.read_metrics(base / "00_data_cache")
    assert cache["num_classes"] == 1000 if "num_classes" in cache else True
    baseline = results.read_metrics(base / "01_deit_baseline")
    # the profile's num_processes: auto is one worker per core here (no GPU): the whole profile rehearses DDP
    assert baseline["eval_samples"] == 1000 and baseline["num_processes"] == hardware.auto_processes()
    assert baseline["mixed_precision"] == "no" and baseline["device"] == "cpu"
    token = results.read_metrics(base / TOKEN_RUN)
    assert token["base_rate"] == 0.7 and token["recipe"]["mixup_alpha"] == 0.8
    control = results.read_metrics(base / "02_token_pruning/control__seed_0")
    assert control["control"] and control["keep_counts"] == [control["tokens_per_block"][0] - 1] * 3
    for point in ("evit", "tome"):  # the contest: DeiT-B's recipe at DynamicViT rho 0.7's MACs
        matched = results.read_metrics(base / f"02_token_pruning/{point}__seed_0")
        assert matched["matched_label"] == "DynamicViT ρ=0.7" and matched["shared_control"] == "plain_control"
        assert matched["macs"] == pytest.approx(token["macs"], rel=0.05)
    combo = results.read_metrics(base / "04_combination/seed_0")
    t2b = next(r for r in combo["rows"] if r["method"] == "token_then_block")
    assert t2b["source_run"] == str(base / TOKEN_RUN / "model.pt")  # no hand-off in this profile
    combo_control = results.read_metrics(base / "04_combination/control__seed_0")
    assert [r["control"] for r in combo_control["rows"]] == [True, True]
    assert combo_control["rows"][0]["source_run"] == str(base / "02_token_pruning/control__seed_0/model.pt")
    manifest = json.loads((base / TOKEN_RUN / "manifest.json").read_text())
    assert manifest["num_processes"] == hardware.auto_processes() and manifest["status"] == "ok"
    table = list((base / "05_analysis").rglob("table1.md"))
    assert table and "DyViT" in table[0].read_text()


def test_baseline_training_on_two_processes_matches_one(inputs):
    """Notebook 01 trains DeiT-Tiny one epoch on the 2000 images: batch 32 on one process,
    16 on each of two (the same images per optimizer step, no augmentation). Stated
    tolerance: training loss within 1e-3 relative (float summation order only)."""
    root, overrides = inputs
    common = declared_only(overrides, "00_data_cache", "01_deit_baseline")
    common.update(train=True, augment="none", eval_every=0, crop_pcts=[0.875])
    out = {}
    for n, batch in ((1, 32), (2, 16)):
        runs = root / f"runs_{n}p"
        pipeline.run_profile("imagenet", only="00_data_cache,01_deit_baseline",
                             overrides={**common, "num_processes": n, "batch_size": batch}, runs_root=str(runs))
        out[n] = results.read_metrics(runs / "imagenet" / "01_deit_baseline")
    assert out[2]["num_processes"] == 2 and out[1]["num_processes"] == 1
    assert out[2]["history"][0]["global_batch"] == out[1]["history"][0]["global_batch"] == 32
    assert out[2]["history"][0]["train_loss"] == pytest.approx(out[1]["history"][0]["train_loss"], rel=1e-3)
    assert out[2]["eval_samples"] == out[1]["eval_samples"] == 1000


def test_released_dynamicvit_checkpoint_is_evaluated_and_block_pruned(inputs, profile_run):
    """02 with token_checkpoint + epochs 0 evaluates given DynamicViT weights (here 02's own,
    rewritten in the official {"model": state_dict} layout: the same top-1 comes back); 04
    block-prunes them (the study's combination step) without looking at 02's run."""
    root, overrides = inputs
    runs, _ = profile_run
    base = runs / "imagenet"
    before = results.read_metrics(base / TOKEN_RUN)
    official = dynamicvit_io.save_official_checkpoint(models.load_checkpoint(base / TOKEN_RUN / "model.pt"),
                                                      root / "dynamicvit_official.pth")
    again = pipeline.run_profile("imagenet", only="02_token_pruning", runs_root=str(runs),
                                 overrides={**declared_only(overrides, "02_token_pruning"),
                                            "token_checkpoint": str(official), "epochs": 0, "base_rate": 0.7})
    assert [s["status"] for s in again] == ["ran"]
    evaluated = results.read_metrics(base / TOKEN_RUN)
    assert evaluated["top1"] == pytest.approx(before["top1"]) and evaluated["train_samples"] == 0
    combo = pipeline.run_profile("imagenet", only="04_combination", runs_root=str(runs),
                                 overrides={**declared_only(overrides, "04_combination"),
                                            "token_checkpoint": str(official), "order": "token_then_block",
                                            "comparators": []})
    assert combo[0]["status"] == "ran"
    row = results.read_metrics(base / "04_combination/seed_0")["rows"][0]
    assert row["method"] == "token_then_block" and row["source_run"] == str(official)
