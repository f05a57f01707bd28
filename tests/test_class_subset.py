"""An ImageFolder holding a subset of ImageNet's classes (wnid folders, as Imagenette) maps by
name to the ImageNet indices when asked; the strict check stays the default; the cache and
`data check` say which mapping was used."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitprune import data
from vitprune.data.folders import map_folders, read_classes_file
from vitprune.errors import UserError

WNIDS = read_classes_file("imagenet")
PICK = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # Imagenette's ten ImageNet classes


def folder(tmp_path):
    root = tmp_path / "imagenette"
    for split in ("train", "val"):
        for i in PICK:
            d = root / split / WNIDS[i]
            d.mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(d / "a.JPEG")
    return root


def test_subset_maps_to_imagenet_indices_only_when_asked(tmp_path):
    names = [WNIDS[i] for i in PICK]
    with pytest.raises(UserError, match="classes with no folder.*class_subset"):
        map_folders(names, WNIDS)
    mapping, classes, naming = map_folders(names, WNIDS, subset=True)
    assert mapping == {WNIDS[i]: i for i in PICK} and classes == WNIDS and naming == "reference-subset"
    with pytest.raises(UserError, match="folders not in the class list"):
        map_folders(names + ["n99999999"], WNIDS, subset=True)


def test_cache_and_data_check_say_which_mapping(tmp_path):
    root = folder(tmp_path)
    report = data.build_cache(tmp_path / "cache", source="imagefolder", imagefolder_dir=str(root),
                              classes_file="imagenet", class_subset=True)
    assert report["label_mapping"].startswith("class subset")
    dsd = data.load_cache(report["cache_path"])
    assert len(data.class_names(dsd)) == 1000
    assert sorted(set(dsd["validation"]["label"])) == PICK
    proc = subprocess.run([sys.executable, "-m", "vitprune", "data", "check", str(root), "--classes", "imagenet",
                           "--subset", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["splits"]["train"]["naming"] == "reference-subset" and out["mapping"][WNIDS[701]] == 701
    strict = subprocess.run([sys.executable, "-m", "vitprune", "data", "check", str(root), "--classes", "imagenet"],
                            capture_output=True, text=True)
    assert strict.returncode == 2 and "classes with no folder" in strict.stderr
