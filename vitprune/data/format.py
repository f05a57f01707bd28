"""The one format every data source is converted to: splits with an `image` column (an
`Image` feature, stored RGB) and a `label` column (a `ClassLabel` carrying the class names).

RGB conversion of any PIL mode, encoding, and the column helpers the other data modules share.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFile

from vitprune.progress import bar as progress_bar
from vitprune.errors import UserError

# Reading truncated files must fail loudly, never pad them silently with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

TRAIN_SPLIT = "train"


def short_list(items: Sequence[Any], limit: int = 10) -> str:
    items = list(items)
    text = ", ".join(repr(x) for x in items[:limit])
    return f"[{text}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


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
    for array in progress_bar(images, desc=desc, unit="img", mininterval=1.0):
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
