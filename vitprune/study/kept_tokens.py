"""Which patches keep their own token after each pruning stage: the file notebook 02 writes for a
few test images (`save`: `kept_tokens.npz`) and the figure notebook 05 draws from every rate's
(`figure`: rows = (run, image), columns = the input, then each stage with dropped patches greyed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from vitprune.methods import registry
from vitprune.study.plot_kit import metric, run_label

FILE = "kept_tokens.npz"


def save(run_dir: str | os.PathLike, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Run `images` (normalised, [B, C, H, W]) through the token method on `model` and write
    <run_dir>/kept_tokens.npz: `images` [B, H, W, C] in [0, 1], `masks` [stages, B, patches]
    (True = the patch's own token is still there), `grid` (patch rows, cols). Returns the eval
    logits and the per-stage masks."""
    method = registry.attached(model)
    if method is None:
        raise ValueError("kept_tokens.save needs a model with a token method applied")
    logits, masks = method.kept_token_masks(model, images)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.5,) * 3)).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5,) * 3)).view(3, 1, 1)
    np.savez_compressed(Path(run_dir) / FILE,
                        images=(images * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy(),
                        masks=torch.stack([m.bool() for m in masks]).numpy(),
                        grid=np.array(model.patch_embed.grid_size))
    return logits, masks


def _load_kept_tokens(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The arrays notebook 02 saves: `images` [B,H,W,C] in [0, 1], `masks` [stages, B, patches]
    (True = kept), `grid` (patch rows, cols)."""
    path = run_dir / FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """One image as HxW or HxWxC in [0, 1] for imshow (CHW and 0..255 accepted)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _masked(image: np.ndarray, mask: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
    """Grey out the patches a stage dropped (mask over the patch grid, row-major; the grid is
    square unless given)."""
    img = _as_hwc(image)
    n = int(mask.size)
    if grid is None:
        side = int(round(math.sqrt(n)))
        grid = (side, side)
    rows, cols = int(grid[0]), int(grid[1])
    if rows * cols != n:
        return img
    ph, pw = img.shape[0] // rows, img.shape[1] // cols
    grid = np.asarray(mask, dtype=bool).reshape(rows, cols)
    keep = np.kron(grid, np.ones((ph, pw), dtype=bool))
    keep = np.pad(keep, ((0, img.shape[0] - keep.shape[0]), (0, img.shape[1] - keep.shape[1])),
                  constant_values=True)
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img.copy()
    rgb[~keep] = 0.5 * rgb[~keep] + 0.5 * np.array([0.85, 0.85, 0.85])
    return rgb


def figure(runs: list[dict], max_images: int = 3) -> Figure | None:
    """Which patches survive each pruning stage, per token-pruning run that saved
    `kept_tokens.npz`: rows = (run, image), columns = input then each stage."""
    arrays, seen = [], set()
    for r in runs:
        if "#" in r["run"] or r["run_dir"] in seen:  # extra table rows share their parent's folder
            continue
        seen.add(r["run_dir"])
        data = _load_kept_tokens(Path(r["run_dir"]))
        if data is not None:
            arrays.append((r, data))
    if not arrays:
        return None
    arrays.sort(key=lambda item: -(metric(item[0], "base_rate") or 0))
    rows = [(r, d, i) for r, d in arrays for i in range(min(max_images, len(d["images"])))]
    ncols = 1 + max(d["masks"].shape[0] for _, d in arrays)
    fig = Figure(figsize=(1.6 * ncols + 0.8, 1.6 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (r, d, i) in enumerate(rows):
        axes[row, 0].imshow(_as_hwc(d["images"][i]), cmap="gray")
        axes[row, 0].set_title(f"{run_label(r)}\ninput", fontsize=7)
        grid = tuple(d["grid"]) if "grid" in d else None
        for s in range(d["masks"].shape[0]):
            mask = d["masks"][s, i]
            axes[row, 1 + s].imshow(_masked(d["images"][i], mask, grid), cmap="gray")
            axes[row, 1 + s].set_title(f"stage {s + 1}: {int(np.sum(mask))}/{mask.size}", fontsize=7)
    fig.suptitle("Kept tokens (grey = dropped)", fontsize=10)
    return fig
