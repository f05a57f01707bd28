"""Write the ImageNet rehearsal inputs: a tiny ImageFolder with ImageNet-1k's 1000 wnid class
folders (train/ and val/, small JPEGs, some CMYK and greyscale as ImageNet holds), and a
random DeiT-Tiny saved in the official DeiT layout {"model": state_dict} (at a small input
size so the rehearsal runs in minutes on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vitprune.data.folders import read_classes_file


def write_imagefolder(root: Path, train_per_class: int = 2, val_per_class: int = 1, size: int = 36,
                      seed: int = 0) -> Path:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG; every 7th image CMYK, every 11th L."""
    rng = np.random.default_rng(seed)
    wnids = read_classes_file("imagenet")
    k = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([label % 256, (label * 7) % 256, (label * 13) % 256], dtype=np.uint8)
            for i in range(count):
                noise = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
                img = Image.fromarray(np.clip(base[None, None] + noise, 0, 255).astype(np.uint8), "RGB")
                if k % 7 == 3:
                    img = img.convert("CMYK")
                elif k % 11 == 5:
                    img = img.convert("L")
                img.save(folder / f"{wnid}_{i}.JPEG", quality=85)
                k += 1
    return root


def write_deit_checkpoint(path: Path, img_size: int = 32, seed: int = 0) -> Path:
    """A random deit_tiny_patch16_224 (at `img_size`) as DeiT's releases store it."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=img_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path
