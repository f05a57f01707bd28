"""Models: every model is built by `timm.create_model`; checkpoints save/load pruned models.

* DeiT family (ImageNet profile): timm's `deit_*_patch16_224`, pretrained from the HF hub
  when it is reachable, else from a local file in the official DeiT layout
  (`{"model": state_dict}` with timm key names, e.g. `deit_base_patch16_224-b5f2ef4d.pth`).
* `vit_fmnist` (embedded profile): a timm `VisionTransformer` for 28x28 Fashion-MNIST with
  depth 12 (so pruning before blocks 3/6/9 means what it means in DeiT-B) and an early
  convolutional stem as its patch embedding (Xiao et al. 2021, "Early Convolutions Help
  Transformers See Better"): three 3x3 conv+BN+ReLU layers (strides 1, 2, 2) and a 1x1
  projection, total stride 4, so a 28x28 image becomes 7x7 = 49 patch tokens (+ CLS = 50 tokens).
  Input is RGB (3 identical channels, as `data.py` converts every image to RGB) normalised
  with Fashion-MNIST's mean/std; the 3 channels cost ~0.3 % of the MACs and keep the whole
  pipeline identical to ImageNet's.
* Checkpoints (`save_checkpoint` / `load_checkpoint`), format "vitprune/1":
  `{"format", "model_name", "model_kwargs", <every registered method's state>, "state_dict",
  **extra}`; the method keys are `registry.method_state` ("block_spec", "block_masks",
  "dynamicvit", "training_free", "merging"; a key a file lacks means not applied, and DynamicViT's
  older key "token_pruning" still loads).
"""

from __future__ import annotations

import copy
import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from vitprune import hub
from vitprune.errors import UserError
from vitprune.methods import registry
from vitprune.torchutil import torch_load, unwrap

CHECKPOINT_FORMAT = "vitprune/1"
FMNIST_MODEL = "vit_fmnist"
# Fashion-MNIST training-set pixel statistics (in [0, 1]), replicated on the 3 RGB channels.
FMNIST_MEAN = (0.2860, 0.2860, 0.2860)
FMNIST_STD = (0.3530, 0.3530, 0.3530)


# --------------------------------------------------------------------------- conv stem


class ConvStem(nn.Module):
    """Early convolutions as a timm `embed_layer` (Xiao et al. 2021, arXiv:2106.14881).

    3x3 conv + BatchNorm + ReLU layers (the last log2(patch_size) of them stride 2, any
    before them stride 1, one per entry of `chans`), then a 1x1 conv to `embed_dim`; output (B, N, embed_dim) tokens like timm's `PatchEmbed`, with the same
    `img_size`, `patch_size`, `grid_size`, `num_patches` attributes (token pruning and
    position embeddings read them). The paper's stem keeps the ViT's total stride and
    replaces one patchify conv by a few small ones; here stride 4 on 28x28 -> 7x7 grid.
    """

    def __init__(self, img_size: int | Sequence[int] = 28, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 64, bias: bool = True, chans: Sequence[int] | None = None,
                 output_fmt: str | None = None, dynamic_img_pad: bool = False, **ignored: Any):
        super().__init__()
        if output_fmt not in (None, "NLC") or dynamic_img_pad:
            raise UserError("ConvStem supports fixed-size inputs only (dynamic_img_size/pad are not available)")
        stages = max(int(patch_size).bit_length() - 1, 0)
        if patch_size < 2 or 2 ** stages != patch_size:
            raise UserError(f"ConvStem needs a power-of-two patch_size >= 2 (one stride-2 conv per factor 2), "
                            f"got {patch_size}")
        chans = list(chans) if chans else [max(embed_dim // 2 ** (stages - i), 8) for i in range(stages)]
        if len(chans) < stages:
            raise UserError(f"ConvStem with patch_size {patch_size} needs at least {stages} stem channel counts "
                            f"(one per stride-2 conv), got {chans}")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(s % patch_size for s in size):
            raise UserError(f"image size {size} is not divisible by the stem's total stride {patch_size}")
        self.img_size = size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = True
        layers: list[nn.Module] = []
        prev = in_chans
        for i, c in enumerate(chans):
            stride = 2 if i >= len(chans) - stages else 1  # extra convs come first, at full resolution
            layers += [nn.Conv2d(prev, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            prev = c
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(prev, embed_dim, 1, bias=bias)

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size):
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} != model img_size {self.img_size}")
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------- timm registration


default_cfgs = generate_default_cfgs({
    FMNIST_MODEL: {
        "url": "", "num_classes": 10, "input_size": (3, 28, 28), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": FMNIST_MEAN, "std": FMNIST_STD,
        "first_conv": "patch_embed.stem.0", "classifier": "head",
        "license": "n/a: trained by notebook 01_deit_baseline, no released weights",
    },
})


@register_model
def vit_fmnist(pretrained: bool = False, stem_chans: Sequence[int] | None = (16, 32, 64),
               fused_attn: bool = False, **kwargs: Any) -> VisionTransformer:
    """Small ViT for 28x28 Fashion-MNIST: conv stem (3x3 convs with 16 / 32 / 64 channels at
    stride 1 / 2 / 2, then 1x1 -> 64: 49 patches), width 64, depth 12, 4 heads of 16, MLP
    ratio 2 (0.43 M params, 26.3 M MACs at batch 1, of which the stem 2.4 M: 9 % of the
    model, which token pruning never touches). The earlier 32 / 64 / 64 stem cost 6.4 of
    30.3 M MACs, so DynamicViT at rho 0.7 could save at most ~29 %; its training step was
    ~10 % slower. The extra full-resolution conv was worth +2.4 test points halfway through a
    2-epoch run (79.9 vs 77.5 % for a 32/64 stride-2-only stem, same recipe).

    `fused_attn=False` computes attention with explicit matmuls: on CPU, at 50 tokens and
    head size 16, torch's fused SDPA kernel was the slowest op of a training step (~40 %
    of it, measured with torch.profiler), and explicit matmuls are exactly countable.
    """
    if pretrained:
        raise UserError(f"{FMNIST_MODEL} has no released weights: train it with notebook "
                        "01_deit_baseline and load its model.pt (load_checkpoint or checkpoint=...)")
    args = dict(img_size=28, patch_size=4, in_chans=3, num_classes=10, embed_dim=64, depth=12,
                num_heads=4, mlp_ratio=2.0, qkv_bias=True, class_token=True, global_pool="token")
    args.update(kwargs)
    args["embed_layer"] = partial(ConvStem, chans=list(stem_chans) if stem_chans else None)
    model = build_model_with_cfg(VisionTransformer, FMNIST_MODEL, pretrained=False, **args)
    for block in model.blocks:
        block.attn.fused_attn = bool(fused_attn)
    return model


# --------------------------------------------------------------------------- create / load


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: a vitprune checkpoint ("state_dict"), the official
    DeiT layout ({"model": ...}), a {"state_dict": ...} file or a bare state dict. A
    DistributedDataParallel "module." prefix is stripped."""
    obj = torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: no state dict found (top-level {keys}); expected the official DeiT "
                        "layout {'model': state_dict}, a vitprune checkpoint or a bare state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _short(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    head = ", ".join(items[:limit])
    return head + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Strict load; on any mismatch one UserError listing missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped: {_short(misshaped, 4)}")
        raise UserError(f"{source} does not fit model {type(model).__name__}: " + "; ".join(parts)
                        + ". Check the model name, num_classes and img_size (they must match the "
                          "checkpoint), or use load_checkpoint() for pruned vitprune checkpoints")
    model.load_state_dict(state_dict, strict=True)
    return model


def create_model(name: str, num_classes: int | None = None, img_size: int | None = None,
                 pretrained: bool = False, checkpoint: str | os.PathLike | None = None,
                 **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, ...)`, weights from the hub (`pretrained=True`) or from a local
    `checkpoint` file (official DeiT `{"model": state_dict}`, a vitprune checkpoint or a bare
    state dict; strict). Records the name and kwargs so `save_checkpoint` can rebuild it."""
    if not timm.is_model(name):
        raise UserError(f"unknown model {name!r}; pick a timm name (e.g. deit_base_patch16_224) or {FMNIST_MODEL}")
    if pretrained and checkpoint is not None:
        raise UserError("give pretrained=True or checkpoint=PATH, not both")
    model_kwargs = dict(kwargs)
    if num_classes is not None:
        model_kwargs["num_classes"] = int(num_classes)
    if img_size is not None:
        model_kwargs["img_size"] = int(img_size)
    if pretrained:
        if not hub.hub_reachable():
            raise UserError(f"pretrained weights for {name!r} need the Hugging Face hub, which is not "
                            "reachable; download the official checkpoint elsewhere (e.g. DeiT's "
                            "deit_base_patch16_224-b5f2ef4d.pth) and pass checkpoint=PATH (notebook "
                            "parameter `checkpoint`), or set HF_HUB_OFFLINE=1 to use a local HF cache")
        try:
            model = timm.create_model(name, pretrained=True, **model_kwargs)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"could not load pretrained weights for {name!r} ({type(exc).__name__}: {exc}); "
                            "pass checkpoint=PATH with a local copy instead") from exc
    else:
        try:
            model = timm.create_model(name, pretrained=False, **model_kwargs)
        except TypeError as exc:
            raise UserError(f"model {name!r} does not accept {sorted(model_kwargs)}: {exc}") from exc
    if checkpoint is not None:
        load_weights(model, read_state_dict(checkpoint), source=str(checkpoint))
    model.vitprune_model_name = name
    model.vitprune_model_kwargs = model_kwargs
    return model


# --------------------------------------------------------------------------- checkpoints


def model_identity(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(timm name, kwargs) that rebuild the unpruned base of `model`."""
    model = unwrap(model)
    name = getattr(model, "vitprune_model_name", None)
    if name is not None:
        return name, dict(getattr(model, "vitprune_model_kwargs", {}))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise UserError("cannot tell which timm model this is: build it with vitprune.models.create_model")
    kwargs: dict[str, Any] = {"num_classes": int(model.num_classes)} if hasattr(model, "num_classes") else {}
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img is not None:
        kwargs["img_size"] = int(img[0])
    return name, kwargs


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write a "vitprune/1" checkpoint atomically (tmp file, then os.replace), with every kind of
    pruning state (`registry.method_state`) so `load_checkpoint` rebuilds the same model."""
    model = unwrap(model)
    name, kwargs = model_identity(model)
    payload = {
        "format": CHECKPOINT_FORMAT, "model_name": name, "model_kwargs": kwargs,
        **registry.method_state(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_from_state(template: nn.Module, state_path: str | os.PathLike, path: str | os.PathLike,
                          keep_state: bool = False, **extra: Any) -> Path:
    """Save, as a checkpoint at `path`, a model of `template`'s architecture and pruning state
    holding the weights `engine.train(handoff=...)` wrote to `state_path` (a bare state dict, gate
    values included); the state file is removed once the checkpoint is written, unless
    `keep_state` (a hand-off state kept beside resumable training state: a re-run that resumes past
    the hand-off saves no new one)."""
    model = copy.deepcopy(unwrap(template))
    model.load_state_dict(torch_load(state_path))
    out = save_checkpoint(path, model, **extra)
    if not keep_state:
        Path(state_path).unlink()
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw "vitprune/1" dict (UserError for any other file)."""
    obj = torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        if isinstance(obj, dict) and obj and (isinstance(obj.get("model"), dict)
                                              or isinstance(obj.get("state_dict"), dict)
                                              or all(isinstance(v, torch.Tensor) for v in obj.values())):
            # weights only (what read_state_dict reads): they do not say which model they belong to
            raise UserError(f"{path} holds plain weights (like the official DeiT file {{'model': state_dict}}), not a "
                            f"{CHECKPOINT_FORMAT} checkpoint, so name their timm model and pass the file as weights: "
                            f"python -m vitprune measure deit_base_patch16_224 --weights {path} (bench and export "
                            "take --weights too; in Python create_model(name, checkpoint=PATH))")
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (format {found!r}); for official "
                        "weights use create_model(name, checkpoint=PATH)")
    return obj


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild a saved model: base model from name/kwargs, then every registered method the
    file records (`registry.restore`: width methods first), then the strict state dict (gate
    values included). Returned in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    model = create_model(ckpt["model_name"], pretrained=False, **dict(ckpt.get("model_kwargs") or {}))
    model = registry.restore(model, ckpt)
    load_weights(model, ckpt["state_dict"], source=str(path))
    return model.eval()
