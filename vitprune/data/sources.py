"""Data sources: Fashion-MNIST from Debian's IDX files or the HF hub, HF `imagenet-1k`.

Each loader returns a `datasets.DatasetDict` in the shared format (`vitprune.data.format`);
ImageFolder directories are read by `vitprune.data.folders`.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from vitprune import hub
from vitprune.data.format import class_names, from_arrays, labels_of, to_rgb
from vitprune.errors import UserError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_IDX_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HUB = "zalando-datasets/fashion_mnist"
IMAGENET_HUB = "imagenet-1k"
# split -> (images file, labels file), as shipped by Debian's dataset-fashion-mnist package
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = ("install Debian's package (sudo apt-get install dataset-fashion-mnist, files in "
                f"{FASHION_MNIST_IDX_DIR}) or go online so the HF hub dataset "
                f"{FASHION_MNIST_HUB!r} can be downloaded")



# ------------------------------------------------------------------ IDX files (MNIST format)

# IDX type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzipped or not): magic = 0x00 0x00 <type> <ndim>, then ndim
    big-endian uint32 sizes, then the data. `expect_magic` (e.g. 0x0803: uint8, 3 dims for
    images; 0x0801 for labels) pins the type. Raises UserError on any inconsistency."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {INSTALL_HINT}") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'} "
                        f"({exc}); the file is damaged: reinstall or re-download it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise UserError(f"{path}: bad IDX magic number {data[:4].hex() or '(empty file)'} "
                        "(expected 0000 <type> <ndim>); the file is damaged or not an IDX file")
    if expect_magic is not None and int.from_bytes(data[:4], "big") != expect_magic:
        raise UserError(f"{path}: bad IDX magic number {data[:4].hex()} (expected {expect_magic:08x}); the file "
                        "is damaged or holds something else: reinstall or re-download it")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: IDX header cut short ({len(data)} bytes); the file is damaged")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow on garbage headers
    if len(data) != expected:
        shape = tuple(dims) if ndim <= 4 else f"{tuple(dims[:4])[:-1]}, ... ({ndim} dims)"
        raise UserError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file "
                        f"holds {len(data)} bytes; the file is truncated or damaged: reinstall or re-download it")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def idx_files_present(idx_dir: str | os.PathLike) -> bool:
    return all((Path(idx_dir) / name).is_file() for files in IDX_FILES.values() for name in files)


def read_fashion_idx(idx_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 images (N, H, W), int labels (N,))} from the four IDX files."""
    idx_dir = Path(idx_dir)
    missing = [n for files in IDX_FILES.values() for n in files if not (idx_dir / n).is_file()]
    if missing:
        raise UserError(f"Fashion-MNIST IDX files missing in {idx_dir}: {missing}; {INSTALL_HINT}")
    out = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = read_idx(idx_dir / images_name, expect_magic=0x0803)  # uint8, (N, rows, cols)
        labels = read_idx(idx_dir / labels_name, expect_magic=0x0801)  # uint8, (N,)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{idx_dir / images_name}: expected uint8 images (N, H, W), got "
                            f"{images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise UserError(f"{idx_dir / labels_name}: expected {len(images)} labels to match the images, "
                            f"got shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
            raise UserError(f"{idx_dir / labels_name}: labels must lie in 0..{len(FASHION_MNIST_CLASSES) - 1}, "
                            f"found {int(labels.min())}..{int(labels.max())}")
        out[split] = (np.ascontiguousarray(images), labels.astype(np.int64))
    return out



# ------------------------------------------------------------------ sources


def _load_hub(name: str, **kwargs):
    import datasets

    if not hub.hub_reachable(offline_env=("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise UserError(f"the HF hub is unreachable (no network) so {name!r} cannot be downloaded; "
                        "if it is already in your HF cache, set HF_DATASETS_OFFLINE=1")
    try:
        return datasets.load_dataset(name, **kwargs)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, auth ...)
        raise UserError(f"loading {name!r} from the HF hub failed: {type(exc).__name__}: {exc}") from None


def _arrays_to_dsd(arrays: dict[str, tuple[np.ndarray, np.ndarray]], select: Callable | None):
    """Encode {split: (images, labels)}, taking `select(split, labels) -> indices` first."""
    import datasets

    out = {}
    for split, (x, y) in arrays.items():
        if select is not None:
            keep = select(split, y)
            x, y = x[keep], y[keep]
        out[split] = from_arrays(x, y, FASHION_MNIST_CLASSES, desc=f"encode {split}")
    return datasets.DatasetDict(out)


def load_fashion_idx(idx_dir: str | os.PathLike = FASHION_MNIST_IDX_DIR, select: Callable | None = None):
    """Fashion-MNIST from the IDX files -> DatasetDict(train, test). `select(split, labels)`
    returns the indices to keep (subsets are taken before encoding)."""
    return _arrays_to_dsd(read_fashion_idx(idx_dir), select)


def _normalise_name(name: str) -> str:
    return re.sub(r"\s+", "", name).lower()


def load_fashion_hub(name: str = FASHION_MNIST_HUB, select: Callable | None = None):
    """Fashion-MNIST from the HF hub, with the same class names and encoding as the IDX path."""
    hub = _load_hub(name)
    arrays = {}
    for split in ("train", "test"):
        if split not in hub:
            raise UserError(f"hub dataset {name!r} has splits {list(hub)}, expected train and test")
        names = class_names(hub[split])
        if [_normalise_name(n) for n in names] != [_normalise_name(n) for n in FASHION_MNIST_CLASSES]:
            raise UserError(f"hub dataset {name!r} has classes {names}, expected {FASHION_MNIST_CLASSES}")
        images = np.stack([np.asarray(to_rgb(img).convert("L")) for img in hub[split]["image"]])
        arrays[split] = (images, labels_of(hub[split]))
    return _arrays_to_dsd(arrays, select)


def resolve_fashion_source(source: str, idx_dir: str | os.PathLike) -> str:
    """"auto" -> "idx" when the four IDX files exist, else "hub" (error if neither works)."""
    if source != "auto":
        return source
    return "idx" if idx_files_present(idx_dir) else "hub"


def load_fashion(source: str = "auto", idx_dir: str | os.PathLike = FASHION_MNIST_IDX_DIR,
                 select: Callable | None = None):
    """IDX files when present, else the hub, else one error telling both ways."""
    resolved = resolve_fashion_source(source, idx_dir)
    if resolved == "idx":
        return load_fashion_idx(idx_dir, select)
    try:
        return load_fashion_hub(select=select)
    except UserError as exc:
        where = f"no IDX files in {idx_dir} and " if source == "auto" else ""
        raise UserError(f"Fashion-MNIST not found: {where}the hub failed ({exc}). To fix: {INSTALL_HINT}") from None



def hf_imagenet_dataset(name: str = IMAGENET_HUB):
    """HF imagenet-1k (HF cache or hub; gated: `huggingface-cli login` first) -> train/validation."""
    import datasets

    hub = _load_hub(name)
    out = datasets.DatasetDict({s: hub[s] for s in ("train", "validation") if s in hub})
    if not out:
        raise UserError(f"{name!r} has splits {list(hub)}, expected train and validation")
    names = class_names(out)
    if len(names) != 1000:
        raise UserError(f"{name!r} has {len(names)} classes, expected ImageNet-1k's 1000")
    return out
