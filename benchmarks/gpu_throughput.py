"""Training and evaluation throughput (images/s) of the study's full-scale models.

    python benchmarks/gpu_throughput.py --batch-size 128 --precision bf16 --json      # DeiT-B on a GPU
    python benchmarks/gpu_throughput.py --model deit_tiny_patch16_224 --img-size 32 \
        --batch-size 8 --steps 2 --precision no --json                             # the CPU smoke run

Rows: training img/s of the DynamicViT/0.7 fine-tune (masked forward with Gumbel decisions,
DynamicViT loss with distillation from the unpruned teacher, AdamW step) and of the
block-pruned fine-tune (half the heads and MLP channels, physically removed; CE +
distillation); evaluation img/s of the baseline, the gathered DynamicViT/0.7 and the
block-pruned model. Weights are random (throughput does not depend on them). Each row: `warmup`
untimed steps, then the median over `steps` timed steps (CUDA synchronised), at the given
batch per step and autocast precision. One process on one device (cuda if present, else cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from vitprune import models
from vitprune.methods import block_pruning
from vitprune.methods import dynamicvit, dynamicvit_loss
from vitprune.train import recipe


def _timed(step, device: torch.device, warmup: int, steps: int) -> float:
    """Median seconds of `step()` after `warmup` calls."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _autocast(device: torch.device, precision: str):
    if precision == "no":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def train_rate(student, teacher, loss_fn, batch, device, precision, warmup, steps) -> float:
    """Images/s of full fine-tuning steps (forward, loss, backward, AdamW)."""
    student = student.to(device).train()
    teacher = teacher.to(device).eval()
    images, labels = batch
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step():
        with _autocast(device, precision):
            loss = loss_fn(student, images, labels, teacher)[0]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return images.shape[0] / _timed(step, device, warmup, steps)


@torch.no_grad()
def eval_rate(model, images, device, precision, warmup, steps) -> float:
    model = model.to(device).eval()

    def step():
        with _autocast(device, precision):
            model(images)

    return images.shape[0] / _timed(step, device, warmup, steps)


def run(model_name: str = "deit_base_patch16_224", img_size: int = 224, batch_size: int = 64,
        precision: str = "bf16", base_rate: float = 0.7, keep: float = 0.5, warmup: int = 2, steps: int = 10,
        device: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    baseline = models.create_model(model_name, img_size=img_size)
    num_classes = baseline.num_classes
    images = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    labels = torch.randint(0, num_classes, (batch_size,), device=dev)

    dyvit = dynamicvit.attach(models.create_model(model_name, img_size=img_size), base_rate)
    dyvit.load_state_dict(baseline.state_dict(), strict=False)
    dynamicvit.set_decision_mode(dyvit, "gumbel")
    block = block_pruning.remove(block_pruning.prune_to(models.create_model(model_name, img_size=img_size),
                                                       keep, keep, "magnitude"))
    dyvit_loss = dynamicvit_loss.make_loss_fn()
    block_loss = recipe.default_loss_fn(label_smoothing=0.1, distill_weight=0.5)
    out = {"model": model_name, "img_size": img_size, "batch_size": batch_size, "precision": precision,
           "device": str(dev), "base_rate": base_rate, "keep_heads": keep, "keep_mlp": keep,
           "warmup": warmup, "steps": steps, "threads": torch.get_num_threads()}
    out["train_img_per_s"] = {
        "dynamicvit": train_rate(dyvit, baseline, dyvit_loss, (images, labels), dev, precision, warmup, steps),
        "block_pruned": train_rate(block, baseline, block_loss, (images, labels), dev, precision, warmup, steps),
    }
    out["eval_img_per_s"] = {
        "baseline": eval_rate(baseline, images, dev, precision, warmup, steps),
        "dynamicvit": eval_rate(dyvit, images, dev, precision, warmup, steps),
        "block_pruned": eval_rate(block, images, dev, precision, warmup, steps),
    }
    base = out["eval_img_per_s"]["baseline"]
    out["eval_speedup"] = {k: v / base for k, v in out["eval_img_per_s"].items() if k != "baseline"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (one device)")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="bf16")
    parser.add_argument("--base-rate", type=float, default=0.7)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of heads and MLP channels kept")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.model, args.img_size, args.batch_size, args.precision, args.base_rate, args.keep,
              args.warmup, args.steps, args.device)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['model']} @ {out['img_size']}px, batch {out['batch_size']}, {out['precision']}, {out['device']}")
        for kind in ("train_img_per_s", "eval_img_per_s"):
            for name, rate in out[kind].items():
                print(f"  {kind[:-8]:5s} {name:13s} {rate:9.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
