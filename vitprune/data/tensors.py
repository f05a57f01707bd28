"""The torch side of the data: timm transforms, a torch Dataset over one cached split,
tensor preloading, batch augmentation, and `prepare_splits`, the data preparation notebooks
01-04 share (evaluation split, balanced subsets, views, preload, augmentation).

Images are float tensors CHW normalised by the model's timm data config. A preloaded view is
also kept in its dataset cache (`<cache>/preloaded/<key>.pt`, keyed by the cache's marker, the
split, the subset's rows and the transform): every later run that preloads the same images with
the same transform loads the same tensors instead of decoding and transforming them again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vitprune import param_rules
from vitprune.progress import bar as progress_bar
from vitprune.data.cache import CACHE_MARKER
from vitprune.data.format import TRAIN_SPLIT, class_names, labels_of, to_rgb
from vitprune.data.subsets import balanced_subset
from vitprune.errors import UserError

# Training-set augmentation: crop_flip = shift + flip whole batches of tensors (random_crop_flip;
# the split is preloaded when `preload`); timm = timm's training transform per image (never
# preloaded); none = the evaluation transform.
AUGMENTS = param_rules.CHOICES["augment"]
EVAL_SPLITS = ("test", "validation", "val")  # Fashion-MNIST: test; ImageNet: validation


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
    transform = create_transform(**config, is_training=train, **overrides)
    if overrides.get("auto_augment"):
        _zero_bit_posterize(transform)
    return transform


def _posterize_keeping_zero_bits(img, bits_to_keep, **_):
    """timm's posterize, with 0 bits kept meaning what it meant before Pillow 13 (every pixel
    value masked to 0: a black image) instead of Pillow 13's ValueError. timm's increasing
    posterize (RandAugment 'inc1', DeiT's recipe) asks for 0 bits at magnitude 10."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, int(bits_to_keep))


def _zero_bit_posterize(transform) -> None:
    """Point the posterize ops of a timm RandAugment / AutoAugment inside `transform` at
    `_posterize_keeping_zero_bits` (same op, same levels; only the 0-bit case changes)."""
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = _posterize_keeping_zero_bits



def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


class TorchView(Dataset):
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
                      for b in progress_bar(blobs, desc="decode", unit="img", mininterval=1.0)]
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


def random_crop_flip(images: torch.Tensor, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Batch augmentation on tensors (any device): shift by up to `pad` pixels (replicate
    padding, then a random crop of the original size) and horizontal flip with p=0.5. Uses
    torch's global RNG (seeded per epoch by `train`)."""
    b, c, h, w = images.shape
    device = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
        dy = torch.randint(0, 2 * pad + 1, (b,)).to(device)
        dx = torch.randint(0, 2 * pad + 1, (b,)).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device)[None])            # (b, h)
        cols = (dx[:, None] + torch.arange(w, device=device)[None])            # (b, w)
        index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        images = padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)
    if flip:
        mask = (torch.rand(b) < 0.5).to(device)
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images


PRELOADED = "preloaded"  # the folder of a dataset cache that keeps its views' preloaded tensors


def preloaded_file(hf_split, transform: Callable | None) -> Path | None:
    """Where the preloaded tensors of `hf_split` (a split of a dataset cache, or a subset of one)
    under `transform` are kept: `<cache>/preloaded/<key>.pt`, the key hashing the cache's
    completion marker (a rebuilt cache has another), the split, the subset's rows and the
    transform's description. None when the split is not read from a finished cache on disk."""
    files = getattr(hf_split, "cache_files", None) or []
    if not files:
        return None
    root = Path(files[0]["filename"]).parent.parent
    marker = root / CACHE_MARKER
    indices = getattr(hf_split, "_indices", None)  # datasets' row mapping of a select(): None for a whole split
    try:
        rows = "all" if indices is None else hashlib.sha256(
            np.asarray(indices.column(0).to_numpy(zero_copy_only=False)).tobytes()).hexdigest()
        key = json.dumps([marker.read_text(), str(hf_split.split), len(hf_split), rows, repr(transform)])
    except (OSError, AttributeError):
        return None
    return root / PRELOADED / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"


def _load_preloaded(path: Path | None) -> TensorDataset | None:
    if path is None or not path.is_file():
        return None
    try:
        images, labels = torch.load(path, map_location="cpu", weights_only=True)
        return TensorDataset(images, labels)
    except Exception:  # noqa: BLE001  a damaged file is made again
        return None


def _keep_preloaded(path: Path | None, tensors: TensorDataset) -> None:
    """Save atomically (a reader never sees half a file); a cache it cannot write to is left alone."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        torch.save(tuple(tensors.tensors), tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def preload(dataset: Dataset, batch_size: int = 512, desc: str = "preload") -> TensorDataset:
    """Run a (deterministic) dataset once and keep its tensors: small datasets such as
    Fashion-MNIST then cost nothing per epoch (augment on batches with `batch_transform`)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    xs, ys = [], []
    for x, y in progress_bar(loader, desc=desc, unit="batch", mininterval=10.0, leave=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    if not xs:
        raise UserError(f"{desc}: the dataset is empty")
    return TensorDataset(torch.cat(xs), torch.cat(ys).long())


# --------------------------------------------------------------------------- checkpoint/resume



# --------------------------------------------------------------------------- notebooks' data


def eval_split_name(dsd) -> str:
    """The split a cache is evaluated on: "test" (Fashion-MNIST) or "validation" (ImageNet)."""
    for name in EVAL_SPLITS:
        if name in dsd:
            return name
    raise UserError(f"the dataset cache has splits {list(dsd)}, none of {', '.join(EVAL_SPLITS)} to evaluate on; "
                    "rebuild it with notebook 00")


class Splits:
    """One run's training and evaluation data (built by `prepare_splits`).

    `train_ds` / `eval_ds` are the (subset) HF splits (`train_ds` is None when the cache has
    no training split); `train_set`, `eval_set` and `eval_view(crop_pct)` the torch Datasets,
    built (and preloaded) on first use; `batch_transform` the batch augmentation for
    `engine.train` (None unless augment is crop_flip).
    """

    def __init__(self, dsd, model, *, train_per_class: int, train_fraction: float, eval_per_class: int,
                 seed: int, augment: str, crop_pad: int, preload: bool, crop_pct: float | None,
                 auto_augment: str = "", re_prob: float = 0.0):
        if augment not in AUGMENTS:
            raise UserError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if (auto_augment or re_prob) and augment != "timm":
            raise UserError(f"auto_augment / re_prob are timm per-image transforms: set augment to 'timm' "
                            f"(got augment={augment!r})")
        if not 0.0 <= re_prob <= 1.0:
            raise UserError(f"re_prob (random erasing probability) must be in [0, 1], got {re_prob}")
        self.train_options = {"auto_augment": auto_augment or None, "re_prob": float(re_prob)}
        self.model, self.augment, self.preload, self.crop_pct = model, augment, preload, crop_pct
        self.class_names = class_names(dsd)
        self.eval_name = eval_split_name(dsd)
        self.train_ds = None
        if TRAIN_SPLIT in dsd:
            self.train_ds = balanced_subset(dsd[TRAIN_SPLIT], per_class=train_per_class or None,
                                            fraction=None if train_per_class else (train_fraction or None), seed=seed)
        self.eval_ds = balanced_subset(dsd[self.eval_name], per_class=eval_per_class or None, seed=seed)
        self.batch_transform = partial(random_crop_flip, pad=crop_pad) if augment == "crop_flip" else None
        self._train_set: Dataset | None = None
        self._eval_sets: dict[float | None, Dataset] = {}

    @property
    def train_set(self) -> Dataset:
        if self._train_set is None:
            if self.train_ds is None:
                raise UserError(f"the dataset cache has no {TRAIN_SPLIT!r} split to train on; rebuild it "
                                "with notebook 00 from a source that has one")
            timm_train = self.augment == "timm"
            transform = transforms_for(self.model, train=timm_train, **(self.train_options if timm_train else {}))
            use_preload = self.preload and self.augment != "timm"  # timm augments each image anew
            self._train_set = self._preloaded(self.train_ds, transform, "preload train") if use_preload else \
                TorchView(self.train_ds, transform)
        return self._train_set

    @property
    def eval_set(self) -> Dataset:
        return self.eval_view(self.crop_pct)

    def eval_view(self, crop_pct: float | None = None) -> Dataset:
        """The evaluation split at one center-crop fraction (None: timm's default for the model)."""
        if crop_pct not in self._eval_sets:
            transform = transforms_for(self.model, train=False, crop_pct=crop_pct)
            self._eval_sets[crop_pct] = self._preloaded(self.eval_ds, transform, f"preload eval {crop_pct or ''}".strip()) \
                if self.preload else TorchView(self.eval_ds, transform)
        return self._eval_sets[crop_pct]

    @staticmethod
    def _preloaded(hf_split, transform: Callable, desc: str) -> TensorDataset:
        """The split preloaded under `transform`: kept in the dataset cache, or made and kept there."""
        path = preloaded_file(hf_split, transform)
        tensors = _load_preloaded(path)
        if tensors is None:
            tensors = preload(TorchView(hf_split, transform), desc=desc)
            _keep_preloaded(path, tensors)
        return tensors


def prepare_splits(dsd, model, *, train_per_class: int = 0, train_fraction: float = 0.0, eval_per_class: int = 0,
                   seed: int = 0, augment: str = "crop_flip", crop_pad: int = 2, preload: bool = True,
                   crop_pct: float | None = None, auto_augment: str = "", re_prob: float = 0.0) -> Splits:
    """The data of one notebook run from a cached DatasetDict: the evaluation split
    (`eval_split_name`), seeded class-balanced subsets (train: `train_per_class` images per
    class, else `train_fraction` of each class, 0 and 0: all; eval: `eval_per_class`, 0: all),
    torch views with the transforms of `model`'s timm data config (`crop_pct` for the
    evaluation set), preloaded into tensors when `preload`, and the training augmentation
    `augment` (see AUGMENTS; crop_flip shifts by up to `crop_pad` pixels). With augment "timm",
    `auto_augment` (timm's spec, e.g. "rand-m9-mstd0.5-inc1": RandAugment as DeiT trains) and
    `re_prob` (random erasing probability, DeiT 0.25) go to timm's `create_transform`."""
    return Splits(dsd, model, train_per_class=train_per_class, train_fraction=train_fraction,
                  eval_per_class=eval_per_class, seed=seed, augment=augment, crop_pad=crop_pad,
                  preload=preload, crop_pct=crop_pct, auto_augment=auto_augment, re_prob=re_prob)
