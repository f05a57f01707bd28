"""Tiny tensor datasets (tests/tinydata.py images, normalised, as RGB) for the engine tests."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

import tinydata


def to_tensor(images) -> torch.Tensor:
    x = torch.from_numpy(images).float().div(255).sub(0.286).div(0.353)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def tensor_sets(train_per_class: int = 8, eval_per_class: int = 5) -> tuple[TensorDataset, TensorDataset]:
    x, y = tinydata.make_images(train_per_class, seed=0)
    xt, yt = tinydata.make_images(eval_per_class, seed=1)
    return (TensorDataset(to_tensor(x), torch.from_numpy(y).long()),
            TensorDataset(to_tensor(xt), torch.from_numpy(yt).long()))
