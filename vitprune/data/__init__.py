"""Datasets as Hugging Face `datasets.DatasetDict`s with correct labels, cached on disk: the
names notebooks and tests call as `data.X`, gathered from the modules that define them.

- `format`: the shared format (an image column stored RGB, a label ClassLabel carrying the class
  names), RGB conversion of any PIL mode, column helpers.
- `sources`: Fashion-MNIST from Debian's IDX files or the HF hub, HF imagenet-1k.
- `folders`: class lists and ImageFolder directories, labels mapped by name, never by the sort
  position of a folder (folders "0".."999" sort as strings, "10" before "2": that scrambled
  every label of the study being reproduced).
- `subsets`: seeded class-balanced subsets.
- `cache`: the atomic on-disk cache (completion marker written last) and ImageFolder export with
  a round-trip check.
- `tensors`: timm transforms, the torch Dataset view, preloading, batch augmentation and
  `data.prepare_splits` (what notebooks 01-04 share).

Importing this package does not import torch (the `tensors` names load on first use).
"""

from __future__ import annotations

from vitprune.data.cache import (CACHE_FORMAT, CACHE_MARKER, SOURCES, CacheSpec, build_cache, cache_info,
                                 convert_split, export_imagefolder, load_cache, save_cache, verify_labels)
from vitprune.data.folders import (IMG_EXTENSIONS, SPLIT_DIRS, FolderScan, check_imagefolder, class_folders,
                                   export_folder_name, imagefolder_dataset, imagefolder_splits, map_folders,
                                   read_classes_file, safe_name, scan_imagefolder)
from vitprune.data.format import (TRAIN_SPLIT, BadImageError, class_names, column, encode_png, features,
                                  from_arrays, labels_of, open_rgb, rgb_image_bytes, to_rgb)
from vitprune.data.sources import (FASHION_MNIST_CLASSES, FASHION_MNIST_HUB, FASHION_MNIST_IDX_DIR, IDX_FILES,
                                   IMAGENET_HUB, hf_imagenet_dataset, idx_files_present, load_fashion,
                                   load_fashion_hub, load_fashion_idx, read_fashion_idx, read_idx,
                                   resolve_fashion_source)
from vitprune.data.subsets import balanced_indices, balanced_subset

# the torch side (`tensors`) loads on first use, so `python -m vitprune data` and the cache start without torch
_TENSORS = ("AUGMENTS", "EVAL_SPLITS", "Splits", "TorchView", "eval_split_name", "prepare_splits", "preload",
            "random_crop_flip", "transforms_for")


def __getattr__(name: str):
    if name in _TENSORS:
        from vitprune.data import tensors  # lazy: imports torch

        return getattr(tensors, name)
    raise AttributeError(f"module 'vitprune.data' has no attribute {name!r}")

__all__ = [
    "AUGMENTS", "BadImageError", "CACHE_FORMAT", "CACHE_MARKER", "CacheSpec", "EVAL_SPLITS", "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_HUB", "FASHION_MNIST_IDX_DIR", "FolderScan", "IDX_FILES", "IMAGENET_HUB", "IMG_EXTENSIONS",
    "SOURCES", "SPLIT_DIRS", "Splits", "TRAIN_SPLIT", "TorchView", "balanced_indices", "balanced_subset",
    "build_cache", "cache_info", "check_imagefolder", "class_folders", "class_names", "column", "convert_split",
    "encode_png", "eval_split_name", "export_folder_name", "export_imagefolder", "features", "from_arrays",
    "hf_imagenet_dataset", "idx_files_present", "imagefolder_dataset", "imagefolder_splits", "labels_of",
    "load_cache", "load_fashion", "load_fashion_hub", "load_fashion_idx", "map_folders", "open_rgb",
    "prepare_splits", "preload", "random_crop_flip", "read_classes_file", "read_fashion_idx", "read_idx",
    "resolve_fashion_source", "rgb_image_bytes", "safe_name", "save_cache", "scan_imagefolder", "to_rgb",
    "transforms_for", "verify_labels",
]
