"""Tiny datasets written in the real on-disk formats, so the real loaders run in tests.

Images are 28x28 greyscale with a class-dependent pattern (a bright horizontal band whose
row depends on the label, plus noise), so a tiny model can learn them in seconds and the
smoke tests can assert better-than-chance accuracy.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_images(per_class: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,), classes interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(num_classes), per_class).astype(np.uint8)
    images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + int(label) * 2
        images[i, row:row + 3, 4:24] = 220
    return images, labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim  # unsigned byte data, ndim dimensions
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_idx_dir(root: Path, train_per_class: int = 12, test_per_class: int = 6) -> Path:
    """The four gzipped IDX files, named as in Debian's dataset-fashion-mnist package."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, per_class, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        images, labels = make_images(per_class, seed)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_imagefolder(root: Path, folder_names: list[str], per_class: int = 3, seed: int = 2) -> Path:
    """root/<folder>/<i>.png; folder i holds images of class i (in the given order)."""
    images, labels = make_images(per_class, seed, num_classes=len(folder_names))
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / folder_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
    return root
