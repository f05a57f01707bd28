"""Class lists and ImageFolder directories: folder names -> labels, by name, never by sort position.

ImageFolder folders named "0".."999" sort as strings ("10" before "2"), which scrambled every
label in the study being reproduced (its ~1 % accuracy). Here a numeric folder maps to the
integer it spells, a named folder to its index in a reference class list, and any disagreement
stops with an error naming the classes. Exports use zero-padded names ("003_Dress") that sort
in label order.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vitprune.data.format import TRAIN_SPLIT, short_list
from vitprune.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
# ImageFolder split directory names -> split names used in the cache ("val" -> "validation",
# the name HF imagenet-1k uses, so both ImageNet sources give the same splits).
SPLIT_DIRS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}



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
        raise UserError(f"classes file {path}: {'duplicate names ' + short_list(dupes) if dupes else 'no names'}; "
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
    naming: str  # "numeric" | "reference" | "reference-subset" | "prefixed" | "sorted"
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
    if root.is_file():
        raise UserError(f"ImageFolder {root} is a file, not a folder of class folders: give the directory holding "
                        "<class>/<image> folders (or train/ and val/ each holding them)")
    if not root.is_dir():
        raise UserError(f"ImageFolder directory {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"ImageFolder directory {root} has no class folders (expected {root}/<class>/<image>)")
    return folders


def _map_to_reference(folders: Sequence[str], reference: list[str], where: str, subset: bool,
                      numeric: list[str]) -> tuple[dict[str, int], list[str], str]:
    """`map_folders` with a class list: each folder by its name, number or "<index>_<name>"."""
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
        problems.append(f"folders not in the class list: {short_list(unknown)}")
    if misordered:
        problems.append(f"folders out of class-list order: {short_list(misordered)}")
    by_label = Counter(mapping.values())
    dup = [f for f, lab in mapping.items() if by_label[lab] > 1]
    if dup:
        problems.append(f"several folders map to the same class: {short_list(sorted(dup))}")
    missing = [reference[i] for i in range(len(reference)) if i not in by_label]
    if missing and not subset:
        problems.append(f"classes with no folder: {short_list(missing)} (a subset of the classes? "
                        "map it by name with class_subset / --subset)")
    if problems:
        raise UserError(f"{where}: class folders disagree with the class list ({len(reference)} classes): "
                        + "; ".join(problems) + ". Fix the folder names or pass the matching classes file")
    naming = "numeric" if numeric and len(numeric) == len(folders) else "reference"
    if missing:
        naming = "reference-subset"
    return mapping, reference, naming


def map_folders(folders: Sequence[str], reference: Sequence[str] | None = None,
                where: str = "ImageFolder", subset: bool = False) -> tuple[dict[str, int], list[str], str]:
    """Folder names -> (mapping folder->label, class names, naming). Maps by name, never by
    sort position; raises UserError naming every folder/class that disagrees.

    With a reference list: a folder equal to a class name (or its `safe_name`) gets that
    class's index; otherwise a numeric folder gets the integer it spells; an exported
    "<index>_<name>" folder gets its name's index, and its prefix must agree. Every class
    needs exactly one folder. Without one: numeric folders -> their integer (0..K-1, no gaps),
    "<index>_<name>" folders -> their index, plain names -> sorted order (the only definition
    there is; `data check` shows it). With `subset` (and a reference), the folders may hold only
    some of the classes (Imagenette, ImageNet-100 as wnid folders): each keeps the reference's
    index and name list, naming "reference-subset"; without it a missing class is an error."""
    numeric = [f for f in folders if f.isdigit()]
    if numeric and len(numeric) != len(folders):
        if reference is None:
            raise UserError(f"{where}: mixes numeric folders {short_list(numeric)} with named ones "
                            f"{short_list([f for f in folders if not f.isdigit()])}; rename them or pass a "
                            "classes file (--classes)")
    if reference is not None:
        return _map_to_reference(folders, list(reference), where, subset, numeric)
    if numeric:
        mapping = {f: int(f) for f in folders}
        labels = sorted(mapping.values())
        dup = sorted(f for f in folders if Counter(mapping.values())[mapping[f]] > 1)
        gaps = sorted(set(range(len(folders))) - set(labels))
        if dup or gaps:
            raise UserError(f"{where}: numeric folder names must spell each label 0..{len(folders) - 1} once; "
                            f"{'duplicates ' + short_list(dup) if dup else ''}"
                            f"{' missing labels ' + short_list(gaps) if gaps else ''}; "
                            "rename the folders or pass a classes file (--classes)")
        return mapping, [str(i) for i in range(len(folders))], "numeric"
    prefixed = [_PREFIXED.match(f) for f in folders]
    if all(prefixed):
        mapping = {m.group(0): int(m.group(1)) for m in prefixed}
        labels = sorted(mapping.values())
        if labels != list(range(len(folders))):
            raise UserError(f"{where}: folders named <index>_<name> must number the labels 0..{len(folders) - 1} "
                            f"once each, found indices {short_list(labels)}; rename them or pass a classes file")
        names = [""] * len(folders)
        for m in prefixed:
            names[int(m.group(1))] = m.group(2)
        return mapping, names, "prefixed"
    # Plain names and no reference: the sorted order is the only definition available.
    return {f: i for i, f in enumerate(folders)}, list(folders), "sorted"


def scan_imagefolder(root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None,
                     with_files: bool = True, subset: bool = False) -> FolderScan:
    """Map <root>/<class>/<image> folders to labels (see `map_folders`) and list the images.
    `classes`: a list of names, or a classes-file path (see `read_classes_file`)."""
    root = Path(root)
    if isinstance(classes, (str, os.PathLike)):
        reference = read_classes_file(classes) if str(classes) else None
    else:
        reference = classes
    folders = class_folders(root)
    if subset and reference is None:
        raise UserError("a class subset maps by name onto a class list: give classes_file / --classes too")
    mapping, names, naming = map_folders(folders, reference, where=f"ImageFolder {root}", subset=subset)
    files = []
    if with_files:
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(root / folder):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in sorted(filenames):
                    if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                        files.append((Path(dirpath) / fname, mapping[folder]))
    return FolderScan(root, mapping, list(names), naming, files)


def check_no_empty_classes(scan: FolderScan) -> None:
    """A class folder without images is a class the model is asked to learn from nothing (and a
    mistake: a failed copy, the wrong extension); only a class subset may leave classes empty."""
    empty = [folder for folder, n in scan.counts.items() if n == 0]
    if empty:
        raise UserError(f"ImageFolder {scan.root}: class folder(s) with no images ({', '.join(IMG_EXTENSIONS[:4])}, "
                        f"...): {short_list(empty)}; add their images or remove the folder(s) (absent on purpose, as in "
                        "a class subset: give --classes with --subset, or --class-subset for `data cache`)")


def imagefolder_splits(root: str | os.PathLike) -> dict[str, Path]:
    """{split: dir}: root/train, root/val|validation, root/test when present, else {"train": root}."""
    root = Path(root)
    folders = class_folders(root)
    splits = {SPLIT_DIRS[f]: root / f for f in folders if f in SPLIT_DIRS}
    if splits and len(splits) == len(folders):
        return splits
    return {TRAIN_SPLIT: root}


def check_imagefolder(path: str | os.PathLike, classes=None, subset: bool = False) -> dict[str, Any]:
    """What `data check` prints: the mapping the loader will use and per-class counts."""
    splits = imagefolder_splits(path)
    scans = {split: scan_imagefolder(d, classes, subset=subset) for split, d in splits.items()}
    if not subset:
        for scan in scans.values():
            check_no_empty_classes(scan)
    if list(splits.values()) == [Path(path)]:
        return scans[TRAIN_SPLIT].report()
    reports = {split: scan.report() for split, scan in scans.items()}
    first = next(iter(reports.values()))
    out = {"root": str(path), "splits": reports, "mapping": first["mapping"], "class_names": first["class_names"],
           "counts": {split: r["counts"] for split, r in reports.items()}}
    if any(r["class_names"] != first["class_names"] for r in reports.values()):
        raise UserError(f"ImageFolder {path}: the splits {list(reports)} define different classes; "
                        "give every split the same class folders or pass --classes")
    return out


def imagefolder_dataset(root: str | os.PathLike, classes=None, subset: bool = False):
    """ImageFolder -> DatasetDict of *unconverted* file references (convert with `convert_split`)."""
    import datasets
    import pyarrow as pa

    root = Path(root)
    out, names = {}, None
    for split, directory in imagefolder_splits(root).items():
        scan = scan_imagefolder(directory, classes, subset=subset)
        if names is not None and scan.class_names != names:
            raise UserError(f"ImageFolder {root}: split {split!r} defines classes {short_list(scan.class_names)}, "
                            f"other splits {short_list(names)}; pass a classes file (--classes)")
        names = scan.class_names
        if not scan.files:
            raise UserError(f"ImageFolder {directory}: no image files ({', '.join(IMG_EXTENSIONS)}) found")
        if not subset:
            check_no_empty_classes(scan)  # before any image is read (verify_labels would find it at the end)
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
