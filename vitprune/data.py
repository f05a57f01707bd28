"""Datasets as Hugging Face `datasets.DatasetDict`s with correct labels, cached on disk.

Every source (Fashion-MNIST IDX files, the HF hub, an ImageFolder directory, HF
`imagenet-1k`) becomes splits with two columns: `image` (an `Image` feature, stored RGB)
and `label` (a `ClassLabel` carrying the class names). The cache is written to a temporary
directory, completed with a marker file and only then renamed into place, so a crash never
leaves something `load_cache` would take as whole.

Labels are defined by *names*, never by the sort position of a folder: ImageFolder folders
named "0".."999" sort as strings ("10" before "2"), which scrambled every label in the
study being reproduced (its ~1 % accuracy). Here a numeric folder maps to the integer it
spells, a named folder to its index in a reference class list, and any disagreement stops
with an error naming the classes. Exports use zero-padded names ("003_Dress") that sort in
label order, and re-read what they wrote to prove it.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import re
import shutil
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm  # plain text bars: also fine in papermill logs and without ipywidgets

from vitprune.errors import UserError

# Reading truncated files must fail loudly, never pad them silently with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

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
SOURCES = ("auto", "idx", "hub", "imagefolder", "hf_imagenet")
CACHE_MARKER = "vitprune_cache.json"
CACHE_FORMAT = "vitprune-data/1"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
# ImageFolder split directory names -> split names used in the cache ("val" -> "validation",
# the name HF imagenet-1k uses, so both ImageNet sources give the same splits).
SPLIT_DIRS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
TRAIN_SPLIT = "train"

INSTALL_HINT = ("install Debian's package (sudo apt-get install dataset-fashion-mnist, files in "
                f"{FASHION_MNIST_IDX_DIR}) or go online so the HF hub dataset "
                f"{FASHION_MNIST_HUB!r} can be downloaded")


def _short_list(items: Sequence[Any], limit: int = 10) -> str:
    items = list(items)
    text = ", ".join(repr(x) for x in items[:limit])
    return f"[{text}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


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


# ------------------------------------------------------------------ RGB conversion


class BadImageError(UserError):
    """An image file that cannot be decoded (truncated, not an image, ...)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB.

    Transparency (RGBA, LA, PA, palette with a transparent index) is composited on a white
    background rather than dropped: dropping alpha exposes whatever colour the encoder left
    under transparent pixels (often black), while white is how the image is seen in a viewer.
    CMYK and greyscale go through PIL's own conversion (JPEG's Adobe-inverted CMYK is already
    undone by PIL's decoder).
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit greyscale: scale the range into 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; PNG is lossless at any level
    return buf.getvalue()


def rgb_image_bytes(data: bytes, name: str) -> bytes:
    """Decode fully (catching truncation), convert to RGB; return bytes the `Image` feature
    decodes to RGB. RGB files are kept byte-for-byte (no JPEG re-compression); anything else
    is converted and stored as PNG. Raises BadImageError naming the file."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "RGB" and getattr(img, "n_frames", 1) == 1:
                return data
            return encode_png(to_rgb(img))
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"{name}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise BadImageError(f"{name}: cannot decode image ({exc}); the file is truncated or not an "
                            "image: replace it, or pass skip_bad=True (--skip-bad) to skip and count it") from None


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open one image file as a fully decoded RGB PIL image (BadImageError naming the file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc})") from None
    out = Image.open(io.BytesIO(rgb_image_bytes(data, str(path))))
    out.load()
    return out


# ------------------------------------------------------------------ building datasets


def column(ds, name: str) -> np.ndarray:
    """One column as a numpy array straight from Arrow (respects select(); fast at ImageNet scale)."""
    return ds.with_format("arrow")[name].to_numpy(zero_copy_only=False)


def labels_of(ds) -> np.ndarray:
    return column(ds, "label").astype(np.int64)


def features(class_names: Sequence[str]):
    import datasets

    # mode="RGB": whatever the stored encoding, decoding always yields RGB.
    return datasets.Features({"image": datasets.Image(mode="RGB"),
                              "label": datasets.ClassLabel(names=list(class_names))})


def from_arrays(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], desc: str = "encode"):
    """uint8 arrays (N, H, W) greyscale or (N, H, W, 3) RGB -> `datasets.Dataset` of PNGs.

    Greyscale stays a 1-channel PNG (encodes 2x faster and is 2x smaller than RGB; Fashion-MNIST's
    70k images in ~5 s on one core); the `Image(mode="RGB")` feature decodes it to RGB."""
    import datasets
    import pyarrow as pa

    blobs = []
    for array in tqdm(images, desc=desc, unit="img", mininterval=1.0):
        blobs.append(encode_png(Image.fromarray(array)))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": None} for b in blobs], type=image_type),
        "label": pa.array(np.asarray(labels, dtype=np.int64)),
    })
    return datasets.Dataset(table).cast(features(class_names))


def class_names(ds) -> list[str]:
    """ClassLabel names of a Dataset or DatasetDict (all splits must agree)."""
    import datasets

    splits = list(ds.values()) if isinstance(ds, datasets.DatasetDict) else [ds]
    names = None
    for split in splits:
        feature = split.features.get("label")
        if not isinstance(feature, datasets.ClassLabel):
            raise UserError(f"dataset column 'label' is {feature!r}, not a ClassLabel with names; "
                            "rebuild the cache with notebook 00")
        if names is not None and feature.names != names:
            raise UserError("splits disagree on the class names; rebuild the cache with notebook 00")
        names = list(feature.names)
    return names


# ------------------------------------------------------------------ class lists and ImageFolder


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Reference class list: one name per line, line i = label i (blank lines and '#' ignored).
    The keyword "imagenet" means timm's bundled ImageNet-1k wnid list (n01440764 ...)."""
    if str(path) == "imagenet":
        # timm ships the list (timm/data/_info/imagenet_synsets.txt, = timm.data.ImageNetInfo's
        # label_names); read the file without importing timm (and torch) for the CLI's sake.
        import importlib.util

        spec = importlib.util.find_spec("timm")
        synsets = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / "imagenet_synsets.txt"
        names = synsets.read_text().split()
        if len(names) != 1000:
            raise UserError(f"{synsets}: expected 1000 ImageNet wnids, found {len(names)}; reinstall timm")
        return names
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classes file {path} not found; give a text file with one class name per line "
                        "(line i = label i), or 'imagenet' for timm's ImageNet-1k wnid list")
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if not names or dupes:
        raise UserError(f"classes file {path}: {'duplicate names ' + _short_list(dupes) if dupes else 'no names'}; "
                        "give each class once, one per line")
    return names


def safe_name(name: str) -> str:
    """A class name usable as a folder name ("T-shirt/top" -> "T-shirt_top")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def export_folder_name(index: int, name: str, num_classes: int) -> str:
    """Zero-padded index + safe name: sorts (as strings) in label order."""
    width = max(3, len(str(num_classes - 1)))
    return f"{index:0{width}d}_{safe_name(name)}"


_PREFIXED = re.compile(r"^(\d+)_(.+)$")


@dataclass
class FolderScan:
    """How an ImageFolder directory's class folders map to labels."""

    root: Path
    mapping: dict[str, int]  # folder name -> label
    class_names: list[str]  # label -> name
    naming: str  # "numeric" | "reference" | "prefixed" | "sorted"
    files: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        count = Counter(label for _, label in self.files)
        return {folder: count.get(label, 0) for folder, label in sorted(self.mapping.items(), key=lambda kv: kv[1])}

    @property
    def sort_order_is_label_order(self) -> bool:
        """Would a sort-position loader (torchvision ImageFolder) give the same labels?"""
        return [self.mapping[f] for f in sorted(self.mapping)] == list(range(len(self.mapping)))

    def report(self) -> dict[str, Any]:
        out = {
            "root": str(self.root), "mapping": dict(sorted(self.mapping.items(), key=lambda kv: kv[1])),
            "counts": self.counts, "class_names": self.class_names, "num_classes": len(self.class_names),
            "num_images": len(self.files), "naming": self.naming,
            "sort_order_is_label_order": self.sort_order_is_label_order,
        }
        if not out["sort_order_is_label_order"]:
            out["warning"] = ("sorting these folder names as strings does NOT give label order: a loader "
                              "that labels by sort position (torchvision ImageFolder) scrambles the labels; "
                              "vitprune maps them by name")
        return out


def class_folders(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"ImageFolder directory {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"ImageFolder directory {root} has no class folders (expected {root}/<class>/<image>)")
    return folders


def map_folders(folders: Sequence[str], reference: Sequence[str] | None = None,
                where: str = "ImageFolder") -> tuple[dict[str, int], list[str], str]:
    """Folder names -> (mapping folder->label, class names, naming). Maps by name, never by
    sort position; raises UserError naming every folder/class that disagrees.

    With a reference list: a folder equal to a class name (or its `safe_name`) gets that
    class's index; otherwise a numeric folder gets the integer it spells; an exported
    "<index>_<name>" folder gets its name's index, and its prefix must agree. Every class
    needs exactly one folder. Without one: numeric folders -> their integer (0..K-1, no gaps),
    "<index>_<name>" folders -> their index, plain names -> sorted order (the only definition
    there is; `data check` shows it)."""
    numeric = [f for f in folders if f.isdigit()]
    if numeric and len(numeric) != len(folders):
        if reference is None:
            raise UserError(f"{where}: mixes numeric folders {_short_list(numeric)} with named ones "
                            f"{_short_list([f for f in folders if not f.isdigit()])}; rename them or pass a "
                            "classes file (--classes)")
    if reference is not None:
        reference = list(reference)
        lookup: dict[str, int] = {}
        for i, name in enumerate(reference):
            lookup.setdefault(name, i)
            lookup.setdefault(safe_name(name), i)
        mapping, unknown, misordered = {}, [], []
        for folder in folders:
            if folder in lookup:
                mapping[folder] = lookup[folder]
            elif folder.isdigit():
                if int(folder) < len(reference):
                    mapping[folder] = int(folder)
                else:
                    unknown.append(folder)
            elif (m := _PREFIXED.match(folder)) and m.group(2) in lookup:
                label = lookup[m.group(2)]
                if int(m.group(1)) != label:
                    misordered.append(f"{folder} (prefix says {int(m.group(1))}, class list says "
                                      f"{reference[label]!r} is {label})")
                mapping[folder] = label
            else:
                unknown.append(folder)
        problems = []
        if unknown:
            problems.append(f"folders not in the class list: {_short_list(unknown)}")
        if misordered:
            problems.append(f"folders out of class-list order: {_short_list(misordered)}")
        by_label = Counter(mapping.values())
        dup = [f for f, lab in mapping.items() if by_label[lab] > 1]
        if dup:
            problems.append(f"several folders map to the same class: {_short_list(sorted(dup))}")
        missing = [reference[i] for i in range(len(reference)) if i not in by_label]
        if missing:
            problems.append(f"classes with no folder: {_short_list(missing)}")
        if problems:
            raise UserError(f"{where}: class folders disagree with the class list ({len(reference)} classes): "
                            + "; ".join(problems) + ". Fix the folder names or pass the matching classes file")
        naming = "numeric" if numeric and len(numeric) == len(folders) else "reference"
        return mapping, reference, naming
    if numeric:
        mapping = {f: int(f) for f in folders}
        labels = sorted(mapping.values())
        dup = sorted(f for f in folders if Counter(mapping.values())[mapping[f]] > 1)
        gaps = sorted(set(range(len(folders))) - set(labels))
        if dup or gaps:
            raise UserError(f"{where}: numeric folder names must spell each label 0..{len(folders) - 1} once; "
                            f"{'duplicates ' + _short_list(dup) if dup else ''}"
                            f"{' missing labels ' + _short_list(gaps) if gaps else ''}; "
                            "rename the folders or pass a classes file (--classes)")
        return mapping, [str(i) for i in range(len(folders))], "numeric"
    prefixed = [_PREFIXED.match(f) for f in folders]
    if all(prefixed):
        mapping = {m.group(0): int(m.group(1)) for m in prefixed}
        labels = sorted(mapping.values())
        if labels != list(range(len(folders))):
            raise UserError(f"{where}: folders named <index>_<name> must number the labels 0..{len(folders) - 1} "
                            f"once each, found indices {_short_list(labels)}; rename them or pass a classes file")
        names = [""] * len(folders)
        for m in prefixed:
            names[int(m.group(1))] = m.group(2)
        return mapping, names, "prefixed"
    # Plain names and no reference: the sorted order is the only definition available.
    return {f: i for i, f in enumerate(folders)}, list(folders), "sorted"


def scan_imagefolder(root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None,
                     with_files: bool = True) -> FolderScan:
    """Map <root>/<class>/<image> folders to labels (see `map_folders`) and list the images.
    `classes`: a list of names, or a classes-file path (see `read_classes_file`)."""
    root = Path(root)
    if isinstance(classes, (str, os.PathLike)):
        reference = read_classes_file(classes) if str(classes) else None
    else:
        reference = classes
    folders = class_folders(root)
    mapping, names, naming = map_folders(folders, reference, where=f"ImageFolder {root}")
    files = []
    if with_files:
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(root / folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in sorted(filenames):
                    if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                        files.append((Path(dirpath) / fname, mapping[folder]))
    return FolderScan(root, mapping, list(names), naming, files)


def imagefolder_splits(root: str | os.PathLike) -> dict[str, Path]:
    """{split: dir}: root/train, root/val|validation, root/test when present, else {"train": root}."""
    root = Path(root)
    folders = class_folders(root)
    splits = {SPLIT_DIRS[f]: root / f for f in folders if f in SPLIT_DIRS}
    if splits and len(splits) == len(folders):
        return splits
    return {TRAIN_SPLIT: root}


def check_imagefolder(path: str | os.PathLike, classes=None) -> dict[str, Any]:
    """What `data check` prints: the mapping the loader will use and per-class counts."""
    splits = imagefolder_splits(path)
    if list(splits.values()) == [Path(path)]:
        return scan_imagefolder(path, classes).report()
    reports = {split: scan_imagefolder(d, classes).report() for split, d in splits.items()}
    first = next(iter(reports.values()))
    out = {"root": str(path), "splits": reports, "mapping": first["mapping"], "class_names": first["class_names"],
           "counts": {split: r["counts"] for split, r in reports.items()}}
    if any(r["class_names"] != first["class_names"] for r in reports.values()):
        raise UserError(f"ImageFolder {path}: the splits {list(reports)} define different classes; "
                        "give every split the same class folders or pass --classes")
    return out


# ------------------------------------------------------------------ converting encoded images


def _convert_batch(batch: dict[str, list], root: str | None = None) -> dict[str, list]:
    """datasets.map worker: read/verify/convert every image; bad ones get an error message."""
    images, errors = [], []
    for item in batch["image"]:
        data, path = item.get("bytes"), item.get("path")
        name = path or "<in-memory image>"
        try:
            if data is None:
                full = Path(root) / path if root and path else Path(path)
                name = str(full)
                try:
                    data = full.read_bytes()
                except OSError as exc:
                    raise BadImageError(f"{full}: cannot read file ({exc})") from None
            images.append({"bytes": rgb_image_bytes(data, name), "path": path})
            errors.append("")
        except BadImageError as exc:
            images.append({"bytes": None, "path": path})
            errors.append(str(exc))
    return {"image": images, "_error": errors}


def convert_split(ds, work_dir: Path, split: str, skip_bad: bool = False, num_proc: int | None = None,
                  root: str | None = None) -> tuple[Any, list[str]]:
    """Verify and RGB-convert every image of a Dataset whose `image` column holds bytes or
    paths. Returns (dataset, error messages of skipped images). Without skip_bad the first
    bad images raise one UserError naming them."""
    import datasets

    names = class_names(ds)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    work_dir.mkdir(parents=True, exist_ok=True)
    converted = raw.map(
        _convert_batch, batched=True, batch_size=256, fn_kwargs={"root": root},
        num_proc=num_proc if num_proc and num_proc > 1 and len(raw) > 1000 else None,
        cache_file_name=str(work_dir / f"{split}-converted.arrow"), desc=f"RGB-convert {split}",
        features=datasets.Features({"image": datasets.Image(decode=False), "label": raw.features["label"],
                                    "_error": datasets.Value("string")}),
    )
    error_col = column(converted, "_error").astype(object)
    bad = np.flatnonzero(error_col != "")
    messages = [str(error_col[i]) for i in bad]
    if len(bad) and not skip_bad:
        raise BadImageError(f"{len(bad)} unreadable image(s) in split {split!r}: "
                            + " | ".join(messages[:3]) + (" | ..." if len(bad) > 3 else ""))
    if len(bad):
        keep = np.setdiff1d(np.arange(len(converted)), bad)
        converted = converted.select(keep)
    converted = converted.remove_columns("_error").cast(features(names))
    return converted, messages


# ------------------------------------------------------------------ sources


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Quick DNS/TCP probe, so an offline machine fails in seconds instead of ~25 s of retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return True  # the user asked for cache-only loading; let `datasets` look there
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection proves nothing; let `datasets` try
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(name: str, **kwargs):
    import datasets

    if not _hub_reachable():
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


def imagefolder_dataset(root: str | os.PathLike, classes=None):
    """ImageFolder -> DatasetDict of *unconverted* file references (convert with `convert_split`)."""
    import datasets
    import pyarrow as pa

    root = Path(root)
    out, names = {}, None
    for split, directory in imagefolder_splits(root).items():
        scan = scan_imagefolder(directory, classes)
        if names is not None and scan.class_names != names:
            raise UserError(f"ImageFolder {root}: split {split!r} defines classes {_short_list(scan.class_names)}, "
                            f"other splits {_short_list(names)}; pass a classes file (--classes)")
        names = scan.class_names
        if not scan.files:
            raise UserError(f"ImageFolder {directory}: no image files ({', '.join(IMG_EXTENSIONS)}) found")
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({
            "image": pa.array([{"bytes": None, "path": str(p.relative_to(root))} for p, _ in scan.files],
                              type=image_type),
            "label": pa.array([label for _, label in scan.files], type=pa.int64()),
        })
        out[split] = datasets.Dataset(table).cast(
            datasets.Features({"image": datasets.Image(decode=False),
                               "label": datasets.ClassLabel(names=scan.class_names)}))
    return datasets.DatasetDict(out)


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


# ------------------------------------------------------------------ subsets


def balanced_indices(labels: Sequence[int] | np.ndarray, per_class: int | None = None,
                     fraction: float | None = None, seed: int = 0) -> np.ndarray:
    """Seeded class-balanced selection, returned in the original order.

    per_class=n: exactly n of every class (UserError if a class has fewer).
    fraction=f: round(f * n_c) of every class c (the same fraction of each class, so a
    balanced source gives equal counts and an imbalanced one keeps its proportions).
    """
    labels = np.asarray(labels)
    if per_class is None and fraction is None:
        return np.arange(len(labels))
    if per_class is not None and fraction is not None:
        raise UserError("give per_class or fraction for a subset, not both")
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class must be >= 1, got {per_class}")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        k = per_class if per_class is not None else max(1, int(round(fraction * len(members))))
        if k > len(members):
            raise UserError(f"class {int(label)} has only {len(members)} examples, {k} per class requested; "
                            "lower the per-class count")
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def balanced_subset(split, per_class: int | None = None, fraction: float | None = None, seed: int = 0):
    """A class-balanced, seeded subset of a `datasets.Dataset` (never "the first 10 %").
    Classes absent from the split are an error when per_class is given."""
    if per_class is not None:
        present = set(np.unique(labels_of(split)).tolist())
        names = class_names(split)
        absent = [names[i] for i in range(len(names)) if i not in present]
        if absent:
            raise UserError(f"classes {_short_list(absent)} have no examples; cannot take {per_class} per class")
    if per_class is None and fraction is None:
        return split
    return split.select(balanced_indices(labels_of(split), per_class, fraction, seed))


# ------------------------------------------------------------------ the cache


def _count_labels(split) -> dict[str, int]:
    names = class_names(split)
    counts = np.bincount(labels_of(split), minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


def verify_labels(dsd) -> dict[str, dict[str, int]]:
    """Check every split: ClassLabel names shared, labels in range, every class present.
    Returns per-split per-class counts."""
    names = class_names(dsd)
    counts = {}
    for split, ds in dsd.items():
        labels = labels_of(ds)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise UserError(f"split {split!r}: labels outside 0..{len(names) - 1}; rebuild the cache")
        counts[split] = _count_labels(ds)
        empty = [n for n, c in counts[split].items() if c == 0]
        if empty:
            raise UserError(f"split {split!r} has no examples of classes {_short_list(empty)}; the source "
                            "or its class list is wrong")
    return counts


def save_cache(dsd, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """save_to_disk into <path>.tmp-<pid>, add the completion marker last, then rename into
    place (an old cache is moved aside first and removed after)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dsd.save_to_disk(str(tmp))
        marker = {"format": CACHE_FORMAT, "complete": True, "class_names": class_names(dsd),
                  "num_rows": {s: len(d) for s, d in dsd.items()}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **(info or {})}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def cache_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The completion marker of a cache, or None if absent/unreadable (= incomplete)."""
    marker = Path(path) / CACHE_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("complete") and info.get("format") == CACHE_FORMAT else None


def load_cache(path: str | os.PathLike):
    """The cached DatasetDict (memory-mapped; loads in seconds). Refuses a cache without its
    completion marker."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"dataset cache {path} does not exist: run notebook 00 first "
                        "(python -m vitprune run --only 00_data_cache)")
    if cache_info(path) is None:
        raise UserError(f"dataset cache {path} is incomplete (no {CACHE_MARKER} completion marker; an interrupted "
                        "run?): re-run notebook 00 (python -m vitprune run --only 00_data_cache --force)")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"dataset cache {path} cannot be loaded ({exc}): re-run notebook 00 with --force") from None


@dataclass
class CacheSpec:
    """Everything that determines a cache's content (compared to reuse an existing one)."""

    source: str = "auto"
    idx_dir: str = FASHION_MNIST_IDX_DIR
    imagefolder_dir: str = ""
    classes_file: str = ""
    train_per_class: int = 0
    eval_per_class: int = 0
    train_fraction: float = 0.0
    eval_fraction: float = 0.0
    skip_bad: bool = False
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _subset_args(split: str, spec: CacheSpec) -> dict[str, Any]:
    per_class = spec.train_per_class if split == TRAIN_SPLIT else spec.eval_per_class
    fraction = spec.train_fraction if split == TRAIN_SPLIT else spec.eval_fraction
    return {"per_class": per_class or None, "fraction": fraction or None, "seed": spec.seed}


def _subset(ds, split: str, spec: CacheSpec):
    return balanced_subset(ds, **_subset_args(split, spec))


def build_cache(cache_dir: str | os.PathLike, spec: CacheSpec | None = None, *, reuse: bool = True,
                num_proc: int | None = None, **kwargs) -> dict[str, Any]:
    """Load the source named by `spec` (or keyword fields of CacheSpec), take the balanced
    subsets, convert every image to RGB, verify the labels and save atomically.

    Returns the cache report (also stored in the marker): cache_path, source, class_names,
    counts {split: {class: n}}, skipped_bad {split: n}, bad_examples, wall_time_s, reused.
    """
    spec = spec or CacheSpec(**kwargs)
    if spec.source not in SOURCES:
        raise UserError(f"unknown data source {spec.source!r}; choose one of {', '.join(SOURCES)}")
    cache_dir = Path(cache_dir).resolve()
    start = time.perf_counter()
    wanted = spec.as_dict()
    if spec.source == "auto":
        wanted["source"] = resolve_fashion_source("auto", spec.idx_dir)
    info = cache_info(cache_dir) if reuse else None
    if info and info.get("spec") == wanted:
        return {**info, "cache_path": str(cache_dir), "reused": True,
                "wall_time_s": time.perf_counter() - start}

    import datasets

    work = cache_dir.with_name(f".{cache_dir.name}.work-{os.getpid()}")
    skipped, bad_examples = {}, []
    try:
        if wanted["source"] in ("idx", "hub"):
            dsd = load_fashion(spec.source, spec.idx_dir,
                               select=lambda split, labels: balanced_indices(labels, **_subset_args(split, spec)))
            skipped = {s: 0 for s in dsd}
        else:
            if wanted["source"] == "imagefolder":
                if not spec.imagefolder_dir:
                    raise UserError("source 'imagefolder' needs imagefolder_dir (the folder holding class "
                                    "folders, or train/ and val/ each holding them)")
                raw = imagefolder_dataset(spec.imagefolder_dir, spec.classes_file or None)
                root = str(Path(spec.imagefolder_dir).resolve())
            else:
                raw, root = hf_imagenet_dataset(), None
            out = {}
            for split, ds in raw.items():
                ds = _subset(ds, split, spec)
                out[split], messages = convert_split(ds, work, split, skip_bad=spec.skip_bad,
                                                     num_proc=num_proc, root=root)
                skipped[split] = len(messages)
                bad_examples += messages[:5]
            dsd = datasets.DatasetDict(out)
        counts = verify_labels(dsd)
        report = {"source": wanted["source"], "spec": wanted, "class_names": class_names(dsd), "counts": counts,
                  "skipped_bad": skipped, "bad_examples": bad_examples}
        save_cache(dsd, cache_dir, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**report, "cache_path": str(cache_dir), "reused": False, "wall_time_s": time.perf_counter() - start}


# ------------------------------------------------------------------ export


def _image_ext(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        fmt = (img.format or "PNG").lower()
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}")


def export_imagefolder(split, out_dir: str | os.PathLike) -> dict[str, int]:
    """Write one split as out_dir/<NNN_name>/<index>.<ext> (the stored bytes, no re-encoding),
    folder names sorting in label order; then re-scan the folder and check that the mapping
    and counts round-trip. Written to a temp dir and renamed. Returns {folder: label}."""
    import datasets

    names = class_names(split)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"export target {out_dir} exists and is not empty; remove it or choose another directory")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    folders = [export_folder_name(i, n, len(names)) for i, n in enumerate(names)]
    try:
        for folder in folders:
            (tmp / folder).mkdir(parents=True)
        raw = split.cast_column("image", datasets.Image(decode=False))
        width = len(str(max(len(raw) - 1, 0)))
        for i, row in enumerate(tqdm(raw, total=len(raw), desc="export", unit="img", mininterval=1.0)):
            data = row["image"]["bytes"]
            (tmp / folders[row["label"]] / f"{i:0{width}d}{_image_ext(data)}").write_bytes(data)
        scan = scan_imagefolder(tmp, names)
        expected = {f: i for i, f in enumerate(folders)}
        if scan.mapping != expected or not scan.sort_order_is_label_order:
            raise RuntimeError(f"export round trip failed: wrote {expected}, read back {scan.mapping}")
        want_counts = _count_labels(split)
        got_counts = {names[scan.mapping[f]]: n for f, n in scan.counts.items()}
        if got_counts != want_counts:
            raise RuntimeError(f"export round trip failed: counts {want_counts} written, {got_counts} read back")
        if out_dir.exists():
            out_dir.rmdir()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return expected


# ------------------------------------------------------------------ torch side


def transforms_for(model, train: bool, crop_pct: float | None = None, **overrides) -> Callable:
    """PIL -> normalised tensor, from timm's data config of `model` (a module, or a timm
    model name whose pretrained config is read without building it). `crop_pct` overrides
    timm's (DeiT: 0.9; the study used 0.875); `overrides` go to `timm.data.create_transform`
    (e.g. scale=(0.5, 1.0), hflip=0.0, color_jitter=0.0 for small grey images)."""
    from timm.data import create_transform, resolve_data_config, resolve_model_data_config

    if isinstance(model, str):
        import timm

        if not timm.is_model(model):
            raise UserError(f"unknown timm model {model!r}; pass the model itself or a registered timm name")
        pretrained = timm.models.get_pretrained_cfg(model)
        if pretrained is None:  # registered without a default cfg: build it (random init) to ask it
            return transforms_for(timm.create_model(model, pretrained=False), train, crop_pct, **overrides)
        config = resolve_data_config(pretrained_cfg=pretrained.to_dict())
    else:
        config = resolve_model_data_config(model)
        # A model built with img_size=... keeps its pretrained cfg's input size: trust the model.
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None:
            config["input_size"] = (config["input_size"][0], *tuple(img_size))
    if crop_pct is not None:
        if not 0 < crop_pct <= 1:
            raise UserError(f"crop_pct must be in (0, 1], got {crop_pct}")
        config["crop_pct"] = crop_pct
    return create_transform(**config, is_training=train, **overrides)


def _to_tensor(img: Image.Image):
    import torch

    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def _torch_view_class():
    """TorchView is built on first use so that the data CLI does not pay torch's import time."""
    import torch.utils.data

    class TorchView(torch.utils.data.Dataset):
        """A torch Dataset over one HF split giving (transform(RGB PIL image), int label).

        Small splits (decoded size <= `max_decoded_bytes`) are decoded once up front into one
        uint8 array, so epochs skip PNG decoding and datasets' per-row overhead (60k Fashion-MNIST
        images: ~140 MB, decoded in a few seconds). Large splits (ImageNet) decode per item.
        `transform=None` gives float tensors in [0, 1], CHW.
        """

        def __init__(self, hf_split, transform: Callable | None = None, decode_once: bool | None = None,
                     max_decoded_bytes: int = 1 << 30):
            self.transform = transform
            self.labels = labels_of(hf_split)
            self.class_names = class_names(hf_split)
            self._split = hf_split
            self._arrays = None
            if decode_once is None:
                decode_once = False
                if len(hf_split):
                    first = to_rgb(hf_split[0]["image"])
                    decode_once = first.width * first.height * 3 * len(hf_split) <= max_decoded_bytes
            if decode_once and len(hf_split):
                # Straight from the Arrow column (respects select()), skipping per-row overhead.
                blobs = hf_split.with_format("arrow")["image"].combine_chunks().field("bytes").to_pylist()
                arrays = [np.asarray(to_rgb(Image.open(io.BytesIO(b))))
                          for b in tqdm(blobs, desc="decode", unit="img", mininterval=1.0)]
                shapes = {a.shape for a in arrays}
                self._arrays = np.stack(arrays) if len(shapes) == 1 else arrays

        def __len__(self) -> int:
            return len(self.labels)

        def image(self, index: int) -> Image.Image:
            if self._arrays is not None:
                return Image.fromarray(self._arrays[index])
            return to_rgb(self._split[int(index)]["image"])

        def __getitem__(self, index: int):
            img = self.image(index)
            return (self.transform(img) if self.transform is not None else _to_tensor(img)), int(self.labels[index])

    TorchView.__qualname__ = "TorchView"  # picklable as vitprune.data.TorchView (DataLoader workers)
    return TorchView


def __getattr__(name: str):
    # PEP 562: `data.TorchView` / `from vitprune.data import TorchView` build the class once.
    if name == "TorchView":
        globals()["TorchView"] = _torch_view_class()
        return globals()["TorchView"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ command line


def _print_check(report: dict[str, Any]) -> None:
    for split, rep_ in (report.get("splits") or {"": report}).items():
        print(f"ImageFolder {rep_['root']}{f' ({split})' if split else ''}: {rep_['num_classes']} classes, "
              f"{rep_['num_images']} images, folders named {rep_['naming']}")
        print(f"  {'folder':<24} {'label':>5}  {'class':<24} {'images':>7}")
        for folder, label in rep_["mapping"].items():
            print(f"  {folder:<24} {label:>5}  {rep_['class_names'][label]:<24} {rep_['counts'][folder]:>7}")
        if rep_.get("warning"):
            print(f"  note: {rep_['warning']}")


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        for key, value in obj.items():
            print(f"{key}: {value}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitprune data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    check = sub.add_parser("check", help="print the folder -> label mapping an ImageFolder loads with")
    check.add_argument("path", help="folder holding class folders (or train/ val/ each holding them)")
    check.add_argument("--classes", default=None,
                       help="reference class list: one name per line, line i = label i ('imagenet' = timm's wnids)")
    check.add_argument("--json", action="store_true")

    cache = sub.add_parser("cache", help="build a dataset cache (what notebook 00 does)")
    cache.add_argument("out", help="cache directory")
    cache.add_argument("--source", default="auto", choices=SOURCES)
    cache.add_argument("--idx-dir", default=FASHION_MNIST_IDX_DIR)
    cache.add_argument("--imagefolder", default="")
    cache.add_argument("--classes", default="")
    cache.add_argument("--train-per-class", type=int, default=0)
    cache.add_argument("--eval-per-class", type=int, default=0)
    cache.add_argument("--train-fraction", type=float, default=0.0)
    cache.add_argument("--eval-fraction", type=float, default=0.0)
    cache.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images")
    cache.add_argument("--seed", type=int, default=0)
    cache.add_argument("--num-proc", type=int, default=None)
    cache.add_argument("--force", action="store_true", help="rebuild even if an identical cache exists")
    cache.add_argument("--json", action="store_true")

    export = sub.add_parser("export", help="write a cache as ImageFolder(s) with label-ordered names")
    export.add_argument("cache", help="cache directory (from notebook 00 or `data cache`)")
    export.add_argument("out", help="output directory (one sub-folder per split unless --split)")
    export.add_argument("--split", default=None)
    export.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    if args.verb == "check":
        report = check_imagefolder(args.path, args.classes)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_check(report)
    elif args.verb == "cache":
        spec = CacheSpec(source=args.source, idx_dir=args.idx_dir, imagefolder_dir=args.imagefolder,
                         classes_file=args.classes, train_per_class=args.train_per_class,
                         eval_per_class=args.eval_per_class, train_fraction=args.train_fraction,
                         eval_fraction=args.eval_fraction, skip_bad=args.skip_bad, seed=args.seed)
        _print(build_cache(args.out, spec, reuse=not args.force, num_proc=args.num_proc), args.json)
    elif args.verb == "export":
        dsd = load_cache(args.cache)
        if args.split is not None:
            if args.split not in dsd:
                raise UserError(f"cache {args.cache} has splits {list(dsd)}, not {args.split!r}")
            result = {args.split: export_imagefolder(dsd[args.split], args.out)}
        else:
            result = {s: export_imagefolder(d, Path(args.out) / s) for s, d in dsd.items()}
        _print({"out": str(args.out), "mapping": result}, args.json)
    return 0
