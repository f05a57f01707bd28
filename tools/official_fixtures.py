"""Developer tool: record the official ToMe and EViT code's logits on fixed weights and images.

    python tools/official_fixtures.py --tome PATH/TO/ToMe --evit PATH/TO/evit

PATH: checkouts of github.com/facebookresearch/ToMe (CC BY-NC 4.0: read and run, never copied
here) and github.com/youweiliang/evit (its `helpers` module imports the unrelated `torchprofile`,
which is stood in for by an empty module). Their code is imported from those folders; this file
holds none of it. It writes tests/fixtures/official/{tome,evit}.pt: for each model the weights (small
timm ViTs with seeded random weights; the released vit_fmnist is named by its sha256, not
copied), the input images (fp16, so both sides read the same values), the settings and the
official logits. tests/test_official_fixtures.py compares our methods against them without the
official code. Run on torch 2.14.1 / timm 1.0 on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vitprune import models  # noqa: E402
from vitprune.data import sources, tensors  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "official"
RELEASED = REPO / "releases" / "fmnist" / "model.pt"

# timm models with seeded random weights: (fixture key, timm name, overrides)
TINY = {
    "vit_cls": ("vit_base_patch16_224", dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                                              num_classes=10)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, patch_size=8, embed_dim=32, depth=4,
                                                              num_heads=2, num_classes=10)),
}


def tiny_model(key: str, seed: int = 0) -> torch.nn.Module:
    """The fixture's timm model `key` with its seeded random weights (what the tests rebuild)."""
    import timm

    name, overrides = TINY[key]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **overrides).eval()
    with torch.no_grad():  # timm zeroes the heads at init: random heads, so every logit depends on the tokens
        for head in (model.head, getattr(model, "head_dist", None)):
            if head is not None:
                head.weight.normal_(0, 0.2)
                head.bias.normal_(0, 0.2)
    return model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fmnist_images(model: torch.nn.Module, n: int = 16) -> torch.Tensor:
    """The first `n` Fashion-MNIST test images, as the released model's evaluation transform makes them."""
    from PIL import Image

    images, _ = sources.read_fashion_idx(sources.FASHION_MNIST_IDX_DIR)["test"]
    transform = tensors.transforms_for(model, train=False)
    return torch.stack([transform(Image.fromarray(img).convert("RGB")) for img in images[:n]])


def random_images(model: torch.nn.Module, n: int = 8, seed: int = 1) -> torch.Tensor:
    size = model.patch_embed.img_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def fp16(images: torch.Tensor) -> torch.Tensor:
    """Stored as fp16; both sides run on `.float()` of it."""
    return images.half()


def models_and_inputs() -> dict[str, tuple[torch.nn.Module, dict, torch.Tensor]]:
    """{key: (model, what rebuilds it, fp16 inputs)}."""
    out = {}
    for key in TINY:
        model = tiny_model(key)
        out[key] = (model, {"timm": key, "state_dict": {k: v.clone() for k, v in model.state_dict().items()}},
                    fp16(random_images(model)))
    released = models.load_checkpoint(RELEASED)
    out["vit_fmnist"] = (released, {"release": str(RELEASED.relative_to(REPO)), "sha256": sha256(RELEASED)},
                         fp16(fmnist_images(released)))
    return out


# ------------------------------------------------------------------ ToMe

TOME_R = {"vit_cls": [4, 8, 16], "deit_distilled": [6, 16], "vit_fmnist": [2, 3, 4]}


def tome_logits(tome_repo: Path) -> dict:
    sys.path.insert(0, str(tome_repo))
    tome = importlib.import_module("tome")
    fixture = {"source": "facebookresearch/ToMe tome.patch.timm (prop_attn=True)", "models": {}}
    for key, (model, rebuild, inputs) in models_and_inputs().items():
        patched = copy.deepcopy(model)
        tome.patch.timm(patched)
        logits = {}
        with torch.no_grad():
            for r in TOME_R[key]:
                patched.r = r
                logits[r] = patched(inputs.float())
        fixture["models"][key] = {**rebuild, "inputs": inputs, "logits": logits}
        print(f"ToMe {key}: r {TOME_R[key]}, {len(inputs)} images")
    return fixture


# ------------------------------------------------------------------ EViT

EVIT_RATES = {"vit_cls": [0.7, 0.5], "vit_fmnist": [0.7, 0.5]}  # at every location (the official *_shrink_base)
EVIT_LOCATIONS = (1, 2, 3)  # vit_cls has 4 blocks
EVIT_FMNIST_LOCATIONS = (3, 6, 9)


def official_evit(evit_module, model: torch.nn.Module, rate: float, locations) -> torch.nn.Module:
    """The official `EViT` class with `model`'s geometry and weights, keeping `rate` at `locations`."""
    depth = len(model.blocks)
    keep_rate = tuple(rate if i in locations else 1 for i in range(depth))
    first = model.blocks[0]
    kwargs = dict(img_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0], in_chans=3,
                  num_classes=model.num_classes, embed_dim=model.embed_dim, depth=depth,
                  num_heads=first.attn.num_heads, mlp_ratio=first.mlp.fc1.out_features / model.embed_dim,
                  qkv_bias=first.attn.qkv.bias is not None, keep_rate=keep_rate, fuse_token=True)
    if isinstance(model.patch_embed, models.ConvStem):
        kwargs["embed_layer"] = lambda **kw: copy.deepcopy(model.patch_embed)
    official = evit_module.EViT(**kwargs)
    official.load_state_dict(model.state_dict(), strict=True)
    return official.eval()


def evit_logits(evit_repo: Path) -> dict:
    sys.modules.setdefault("torchprofile", types.SimpleNamespace(profile_macs=None))  # helpers.py's unused import
    sys.path.insert(0, str(evit_repo))
    evit_module = importlib.import_module("evit")
    fixture = {"source": "youweiliang/evit evit.EViT (fuse_token=True)", "models": {}}
    for key, (model, rebuild, inputs) in models_and_inputs().items():
        if key not in EVIT_RATES:
            continue
        locations = EVIT_FMNIST_LOCATIONS if key == "vit_fmnist" else EVIT_LOCATIONS
        logits = {}
        with torch.no_grad():
            for rate in EVIT_RATES[key]:
                logits[rate] = official_evit(evit_module, model, rate, locations)(inputs.float())
        fixture["models"][key] = {**rebuild, "inputs": inputs, "locations": list(locations), "logits": logits}
        print(f"EViT {key}: keep rates {EVIT_RATES[key]} at blocks {list(locations)}, {len(inputs)} images")
    return fixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tome", type=Path, help="checkout of facebookresearch/ToMe")
    parser.add_argument("--evit", type=Path, help="checkout of youweiliang/evit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.tome:
        torch.save(tome_logits(args.tome), OUT / "tome.pt")
    if args.evit:
        torch.save(evit_logits(args.evit), OUT / "evit.pt")
    for path in sorted(OUT.glob("*.pt")):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
