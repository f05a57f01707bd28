"""vitprune.data on real on-disk formats: IDX files, ImageFolders, image files of every mode."""

import gzip
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tinydata
from vitprune import data, hub
from vitprune.data import sources as data_sources
from vitprune.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def band_label(img: Image.Image) -> int:
    """tinydata draws a bright band starting at row 2 + 2 * label: recover the label from pixels."""
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    top = int(np.argmax(grey[:, 4:24].mean(axis=1) > 150))
    return (top - 2) // 2


@pytest.fixture(scope="module")
def fmnist_cache(tmp_path_factory, tiny_idx_dir):
    out = tmp_path_factory.mktemp("cache") / "fmnist"
    report = data.build_cache(out, source="idx", idx_dir=str(tiny_idx_dir))
    return out, report


# ------------------------------------------------------------------ IDX


def test_idx_parsing_round_trips_the_tiny_files(tiny_idx_dir):
    arrays = data.read_fashion_idx(tiny_idx_dir)
    images, labels = tinydata.make_images(12, seed=0)
    np.testing.assert_array_equal(arrays["train"][0], images)
    np.testing.assert_array_equal(arrays["train"][1], labels)
    assert arrays["test"][0].shape == (60, 28, 28)


def test_idx_cache_has_rgb_images_and_named_labels(fmnist_cache):
    path, report = fmnist_cache
    dsd = data.load_cache(path)
    assert set(dsd) == {"train", "test"}
    assert data.class_names(dsd) == tinydata.FASHION_CLASSES
    assert report["counts"]["train"] == {name: 12 for name in tinydata.FASHION_CLASSES}
    images, labels = tinydata.make_images(12, seed=0)
    row = dsd["train"][5]
    assert row["image"].mode == "RGB" and row["image"].size == (28, 28)
    assert row["label"] == labels[5]
    rgb = np.asarray(row["image"])
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], images[5])


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x00\x00\x09\x99" + raw[4:], "magic"),  # ndim 0x99: not this file's header
    (lambda raw: b"\x12\x34" + raw[2:], "magic"),
    (lambda raw: raw[:-100], "truncated"),
])
def test_corrupted_idx_file_is_a_clear_error(tmp_path, tiny_idx_dir, damage, message):
    raw = gzip.decompress((tiny_idx_dir / "train-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(damage(raw)))
    for other in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / other).write_bytes((tiny_idx_dir / other).read_bytes())
    with pytest.raises(UserError, match=message) as info:
        data.read_fashion_idx(tmp_path)
    assert str(bad) in str(info.value)


def test_idx_file_that_is_not_gzip_names_the_file(tmp_path):
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        data.read_idx(bad)


def test_missing_dataset_tells_both_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)  # this machine is offline anyway
    with pytest.raises(UserError) as info:
        data.build_cache(tmp_path / "c", source="auto", idx_dir=str(tmp_path / "nothing"))
    text = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in text and "zalando-datasets/fashion_mnist" in text
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        data.build_cache(tmp_path / "c", source="idx", idx_dir=str(tmp_path / "nothing"))
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ ImageFolder label mapping


def test_numeric_folders_map_to_the_integer_they_spell(tmp_path):
    names = [str(i) for i in range(12)]
    tinydata.write_imagefolder(tmp_path / "f", names, per_class=2)
    scan = data.scan_imagefolder(tmp_path / "f")
    assert scan.mapping["10"] == 10 and scan.mapping["2"] == 2  # sort position of "10" is 2
    assert scan.naming == "numeric" and not scan.sort_order_is_label_order
    report = data.build_cache(tmp_path / "c", source="imagefolder", imagefolder_dir=str(tmp_path / "f"))
    train = data.load_cache(report["cache_path"])["train"]
    assert data.class_names(train) == names
    for row in train:  # every image carries the label its pixels were drawn for
        assert band_label(row["image"]) == row["label"]


def test_wnid_folders_follow_the_classes_file_not_sort_order(tmp_path):
    wnids = ["n03000134", "n01440764", "n02099601"]  # deliberately not sorted
    tinydata.write_imagefolder(tmp_path / "f", wnids, per_class=2)  # folder i holds class i images
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(wnids) + "\n")
    scan = data.scan_imagefolder(tmp_path / "f", str(classes))
    assert scan.mapping == {"n03000134": 0, "n01440764": 1, "n02099601": 2}
    assert scan.class_names == wnids
    report = data.build_cache(tmp_path / "c", source="imagefolder", imagefolder_dir=str(tmp_path / "f"),
                              classes_file=str(classes))
    for row in data.load_cache(report["cache_path"])["train"]:
        assert band_label(row["image"]) == row["label"]


def test_imagenet_keyword_gives_timms_wnid_list():
    from timm.data import ImageNetInfo

    wnids = data.read_classes_file("imagenet")
    assert wnids == list(ImageNetInfo().label_names()) and wnids[0] == "n01440764"


def test_disagreeing_folder_names_the_classes(tmp_path):
    tinydata.write_imagefolder(tmp_path / "f", ["cat", "dog", "emu"], per_class=1)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nfox\n")
    with pytest.raises(UserError) as info:
        data.scan_imagefolder(tmp_path / "f", str(classes))
    assert "'emu'" in str(info.value) and "'fox'" in str(info.value)


def test_prefixed_folder_out_of_order_is_an_error(tmp_path):
    tinydata.write_imagefolder(tmp_path / "f", ["000_cat", "002_dog"], per_class=1)
    with pytest.raises(UserError, match="002_dog"):
        data.scan_imagefolder(tmp_path / "f", ["cat", "dog"])


def test_numeric_folders_with_a_gap_are_an_error(tmp_path):
    tinydata.write_imagefolder(tmp_path / "f", ["0", "1", "3"], per_class=1)
    with pytest.raises(UserError, match="missing labels"):
        data.scan_imagefolder(tmp_path / "f")
    tinydata.write_imagefolder(tmp_path / "g", ["000_cat", "002_dog"], per_class=1)
    with pytest.raises(UserError, match="number the labels"):
        data.scan_imagefolder(tmp_path / "g")


def test_export_round_trip(tmp_path, fmnist_cache):
    split = data.load_cache(fmnist_cache[0])["test"]
    mapping = data.export_imagefolder(split, tmp_path / "out")
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert folders[3] == "003_Dress" and folders[0] == "000_T-shirt_top"
    assert [mapping[f] for f in folders] == list(range(10))
    report = data.build_cache(tmp_path / "c", source="imagefolder", imagefolder_dir=str(tmp_path / "out"))
    again = data.load_cache(report["cache_path"])["train"]
    assert data.class_names(again) == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                       "Shirt", "Sneaker", "Bag", "Ankle_boot"]  # safe names, label order
    assert sorted(again["label"]) == sorted(split["label"])
    for row in again:
        assert band_label(row["image"]) == row["label"]
    with pytest.raises(UserError, match="not empty"):
        data.export_imagefolder(split, tmp_path / "out")
    (tmp_path / "out" / "stale.txt").write_text("an earlier export's leftover")
    assert data.export_imagefolder(split, tmp_path / "out", replace=True) == mapping
    assert not (tmp_path / "out" / "stale.txt").exists()


# ------------------------------------------------------------------ RGB conversion and bad files


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _decoded(blob: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data.rgb_image_bytes(blob, "x")))
    img.load()
    return img


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = _decoded(_encode(cmyk, "JPEG"))
    assert out.mode == "RGB"
    r, g, b = np.asarray(out).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_greyscale_becomes_rgb_with_equal_channels():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, mode="L")
    out = np.asarray(_decoded(_encode(grey, "PNG")))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], np.asarray(grey))
    np.testing.assert_array_equal(out[..., 2], np.asarray(grey))


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (10, 20, 30, 255))  # one opaque pixel
    out = np.asarray(_decoded(_encode(rgba, "PNG")))
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [10, 20, 30]


def test_palette_images_become_rgb():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert np.asarray(_decoded(_encode(pal, "PNG")))[0, 0].tolist() == [200, 100, 50]
    pal.info["transparency"] = 1  # index 1 transparent -> white
    blob = _encode(pal, "PNG")
    assert Image.open(io.BytesIO(blob)).mode == "P"
    assert np.asarray(_decoded(blob))[0, 0].tolist() == [255, 255, 255]


def test_rgb_jpeg_bytes_are_kept_unchanged():
    blob = _encode(Image.new("RGB", (8, 8), (1, 2, 3)), "JPEG")
    assert data.rgb_image_bytes(blob, "x") == blob


def _folder_with_bad_files(root: Path) -> list[Path]:
    tinydata.write_imagefolder(root, ["0", "1"], per_class=3)
    good = sorted((root / "1").glob("*.png"))[0]
    bad_png = root / "1" / "cut.png"
    bad_png.write_bytes(good.read_bytes()[:60])
    jpeg = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    bad_jpg = root / "0" / "cut.jpg"
    bad_jpg.write_bytes(jpeg[: len(jpeg) // 2])
    (root / "0" / "cmyk.jpg").write_bytes(_encode(Image.new("CMYK", (28, 28), (0, 0, 0, 0)), "JPEG"))
    return [bad_png, bad_jpg]


def test_truncated_image_error_names_the_file(tmp_path):
    bad = _folder_with_bad_files(tmp_path / "f")
    with pytest.raises(UserError) as info:
        data.build_cache(tmp_path / "c", source="imagefolder", imagefolder_dir=str(tmp_path / "f"))
    assert any(p.name in str(info.value) for p in bad) and "skip_bad" in str(info.value)
    assert not (tmp_path / "c").exists()
    with pytest.raises(data.BadImageError, match="cut.png"):
        data.open_rgb(bad[0])


def test_skip_bad_skips_and_counts(tmp_path):
    _folder_with_bad_files(tmp_path / "f")
    report = data.build_cache(tmp_path / "c", source="imagefolder", imagefolder_dir=str(tmp_path / "f"),
                              skip_bad=True)
    assert report["skipped_bad"] == {"train": 2}
    assert report["counts"]["train"] == {"0": 4, "1": 3}  # 3 good + the CMYK one; 3 good
    train = data.load_cache(report["cache_path"])["train"]
    assert len(train) == 7 and all(row["image"].mode == "RGB" for row in train)


# ------------------------------------------------------------------ subsets


def test_balanced_subsets_are_equal_per_class_and_seeded():
    labels = np.repeat(np.arange(5), [30, 20, 40, 25, 50])
    a = data.balanced_indices(labels, per_class=7, seed=1)
    assert np.bincount(labels[a]).tolist() == [7] * 5
    np.testing.assert_array_equal(a, data.balanced_indices(labels, per_class=7, seed=1))
    assert not np.array_equal(a, data.balanced_indices(labels, per_class=7, seed=2))
    frac = data.balanced_indices(labels, fraction=0.2, seed=0)
    assert np.bincount(labels[frac]).tolist() == [6, 4, 8, 5, 10]
    with pytest.raises(UserError, match="only 20"):
        data.balanced_indices(labels, per_class=21)


def test_balanced_subset_of_a_split(fmnist_cache):
    train = data.load_cache(fmnist_cache[0])["train"]
    sub = data.balanced_subset(train, per_class=3, seed=0)
    assert np.bincount(sub["label"]).tolist() == [3] * 10
    pixels = lambda ds: [np.asarray(img).tobytes() for img in ds["image"]]  # noqa: E731
    assert pixels(sub) == pixels(data.balanced_subset(train, per_class=3, seed=0))
    assert pixels(sub) != pixels(data.balanced_subset(train, per_class=3, seed=5))
    first = data.balanced_subset(train, fraction=0.25, seed=0)
    assert np.bincount(first["label"]).tolist() == [3] * 10
    assert sub["image"][0].mode == "RGB"


def test_subsets_applied_when_caching(tmp_path, tiny_idx_dir):
    report = data.build_cache(tmp_path / "c", source="idx", idx_dir=str(tiny_idx_dir),
                              train_per_class=5, eval_per_class=2, seed=3)
    assert set(report["counts"]["train"].values()) == {5}
    assert set(report["counts"]["test"].values()) == {2}


# ------------------------------------------------------------------ the cache


def test_incomplete_cache_is_refused(tmp_path, fmnist_cache):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fmnist_cache[0], copy)
    data.load_cache(copy)
    (copy / data.CACHE_MARKER).unlink()
    with pytest.raises(UserError, match="re-run notebook 00"):
        data.load_cache(copy)
    with pytest.raises(UserError, match="does not exist"):
        data.load_cache(tmp_path / "nowhere")


def test_interrupted_save_leaves_the_old_cache_whole(tmp_path, tiny_idx_dir, monkeypatch):
    import datasets

    kwargs = dict(source="idx", idx_dir=str(tiny_idx_dir), train_per_class=4, eval_per_class=2)
    data.build_cache(tmp_path / "c", **kwargs)
    real_save = datasets.DatasetDict.save_to_disk

    def crash(self, path, **kw):
        real_save(self, path, **kw)  # everything written ... then the process "dies" before the marker
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        data.build_cache(tmp_path / "c", **{**kwargs, "train_per_class": 6})
    with pytest.raises(KeyboardInterrupt):
        data.build_cache(tmp_path / "fresh", **kwargs)
    assert len(data.load_cache(tmp_path / "c")["train"]) == 40  # the old, complete cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no half-written cache anywhere


def test_identical_cache_is_reused_and_a_changed_spec_rebuilds(tmp_path, tiny_idx_dir):
    kwargs = dict(source="idx", idx_dir=str(tiny_idx_dir), train_per_class=4, eval_per_class=2)
    first = data.build_cache(tmp_path / "c", **kwargs)
    assert not first["reused"] and data.build_cache(tmp_path / "c", **kwargs)["reused"]
    rebuilt = data.build_cache(tmp_path / "c", **{**kwargs, "train_per_class": 6})
    assert not rebuilt["reused"] and len(data.load_cache(tmp_path / "c")["train"]) == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp/old dirs left behind


# ------------------------------------------------------------------ torch side


def test_torch_view_and_timm_transforms(fmnist_cache):
    import timm
    import torch

    train = data.load_cache(fmnist_cache[0])["train"]
    model = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, num_classes=10)
    tf = data.transforms_for(model, train=False, crop_pct=1.0)
    view = data.TorchView(train, tf)
    assert view._arrays is not None  # small split decoded once
    x, y = view[7]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 28, 28) and y == train[7]["label"]
    lazy = data.TorchView(train, tf, decode_once=False)
    torch.testing.assert_close(lazy[7][0], x)
    assert isinstance(view, torch.utils.data.Dataset)
    torch.testing.assert_close(pickle.loads(pickle.dumps(view))[7][0], x)  # DataLoader workers (spawn)
    deit = data.transforms_for("deit_base_patch16_224", train=False)
    assert "CenterCrop(size=(224, 224))" in repr(deit) and "Resize(size=248" in repr(deit)  # crop_pct 0.9
    study = data.transforms_for("deit_base_patch16_224", train=False, crop_pct=0.875)
    assert "Resize(size=256" in repr(study)


def test_prepare_splits_subsets_preloads_and_augments(fmnist_cache):
    import datasets
    import timm
    import torch

    dsd = data.load_cache(fmnist_cache[0])
    model = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, num_classes=10)
    splits = data.prepare_splits(dsd, model, train_per_class=3, eval_per_class=2, seed=1, augment="crop_flip",
                                 crop_pad=2, preload=True)
    assert splits.eval_name == "test" and splits.class_names == tinydata.FASHION_CLASSES
    assert data.column(splits.train_ds, "label").tolist() == data.column(
        data.balanced_subset(dsd["train"], per_class=3, seed=1), "label").tolist()
    assert isinstance(splits.train_set, torch.utils.data.TensorDataset) and len(splits.train_set) == 30
    assert len(splits.eval_set) == 20 and splits.eval_view(None) is splits.eval_set  # built once
    view = data.TorchView(splits.eval_ds, data.transforms_for(model, train=False))
    torch.testing.assert_close(splits.eval_set[3][0], view[3][0])
    assert splits.batch_transform.func is data.random_crop_flip and splits.batch_transform.keywords == {"pad": 2}
    # fraction when no per-class count; timm augments each image anew, so its training set is a view
    timm_splits = data.prepare_splits(dsd, model, train_fraction=0.5, augment="timm", preload=True)
    assert isinstance(timm_splits.train_set, data.TorchView) and len(timm_splits.train_set) == 60
    assert timm_splits.batch_transform is None and len(timm_splits.eval_set) == 60
    assert data.prepare_splits(dsd, model, augment="none", preload=False).batch_transform is None
    with pytest.raises(UserError, match="augment must be one of crop_flip, timm, none"):
        data.prepare_splits(dsd, model, augment="true")
    eval_only = data.prepare_splits(datasets.DatasetDict({"validation": dsd["test"]}), model)
    assert eval_only.eval_name == "validation" and eval_only.train_ds is None
    with pytest.raises(UserError, match="no 'train' split"):
        eval_only.train_set
    with pytest.raises(UserError, match="none of test, validation, val"):
        data.prepare_splits(datasets.DatasetDict({"train": dsd["train"]}), model)


def test_preloaded_tensors_are_kept_in_the_cache_and_loaded_again(fmnist_cache, tmp_path, monkeypatch):
    """A later run that preloads the same rows with the same transform loads the tensors the first
    made (equal to the last bit) instead of decoding again; other rows, another transform or a
    rebuilt cache get files of their own, and a damaged file is made again."""
    import shutil

    import timm
    import torch

    from vitprune.data import tensors

    cache = tmp_path / "fmnist"
    shutil.copytree(fmnist_cache[0], cache, ignore=shutil.ignore_patterns(tensors.PRELOADED))  # others' tensors
    dsd = data.load_cache(cache)
    model = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, num_classes=10)
    first = data.prepare_splits(dsd, model, train_per_class=3, seed=1)
    made = (first.train_set, first.eval_set)
    kept = sorted((cache / tensors.PRELOADED).glob("*.pt"))
    assert len(kept) == 2
    def not_again(*args, **kwargs):
        raise AssertionError("decoded and transformed again")

    monkeypatch.setattr(tensors, "preload", not_again)
    again = data.prepare_splits(data.load_cache(cache), model, train_per_class=3, seed=1)
    for old, new in zip(made, (again.train_set, again.eval_set)):
        assert all(torch.equal(a, b) for a, b in zip(old.tensors, new.tensors))
    monkeypatch.undo()
    data.prepare_splits(dsd, model, train_per_class=3, seed=2).train_set  # other rows
    data.prepare_splits(dsd, model, crop_pct=0.5).eval_set  # another transform
    assert len(list((cache / tensors.PRELOADED).glob("*.pt"))) == 4
    kept[0].write_bytes(b"not a tensor file")
    redone = data.prepare_splits(data.load_cache(cache), model, train_per_class=3, seed=1)
    assert len(redone.train_set) == 30 and len(redone.eval_set) == 60 and kept[0].stat().st_size > 100
    assert tensors.preloaded_file(data.balanced_subset(dsd["train"], per_class=3, seed=1), None) != \
        tensors.preloaded_file(data.balanced_subset(dsd["train"], per_class=3, seed=2), None)


# ------------------------------------------------------------------ command line and notebook


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "vitprune", "data", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_data_command_line_imports_no_torch():
    code = "import sys, vitprune.cli.data; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_check_prints_the_mapping(tmp_path):
    tinydata.write_imagefolder(tmp_path / "f", [str(i) for i in range(12)], per_class=1)
    done = _cli("check", tmp_path / "f", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["mapping"]["10"] == 10 and out["counts"]["10"] == 1
    assert out["sort_order_is_label_order"] is False


def test_cli_check_disagreement_exits_2_naming_the_class(tmp_path):
    tinydata.write_imagefolder(tmp_path / "f", ["cat", "dog"], per_class=1)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\nbird\n")
    done = _cli("check", tmp_path / "f", "--classes", classes, "--json")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "'dog'" in done.stderr and "'bird'" in done.stderr


def test_cli_cache_and_export(tmp_path, tiny_idx_dir):
    done = _cli("cache", tmp_path / "c", "--source", "idx", "--idx-dir", tiny_idx_dir,
                "--train-per-class", "2", "--eval-per-class", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["test"]["Bag"] == 1
    done = _cli("export", tmp_path / "c", tmp_path / "x", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mapping"]["train"]["009_Ankle_boot"] == 9
    assert len(list((tmp_path / "x" / "train" / "009_Ankle_boot").iterdir())) == 2


@pytest.mark.notebook
@pytest.mark.notebook
def test_notebook_00_runs_on_tiny_idx_data(smoke_runs):
    """The smoke pipeline's notebook 00 on the tiny IDX files (the CLI route: test_pipeline)."""
    run_dir = smoke_runs / "00_data_cache"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["source"] == "idx" and metrics["class_names"] == tinydata.FASHION_CLASSES
    assert metrics["counts"] == {"train": 120, "test": 60}
    assert metrics["class_counts"]["test"]["Dress"] == 6
    dsd = data.load_cache(metrics["cache_path"])
    assert len(dsd["train"]) == 120
    assert sorted(p.name for p in (run_dir / "imagefolder" / "train").iterdir())[3] == "003_Dress"
    nb = json.loads((run_dir / "00_data_cache.ipynb").read_text())
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the sample grid and the counts plot render inline


# ------------------------------------------------------------------ hub sources (offline: a local stand-in)


def _hub_like(split_sizes: dict, names: list, make_image):
    """A DatasetDict shaped like a hub download: Image feature holding encoded bytes."""
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    out = {}
    for split, n in split_sizes.items():
        labels = [i % len(names) for i in range(n)]
        out[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": _encode(img := make_image(i, lab), "JPEG" if img.mode in ("RGB", "CMYK") else "PNG"),
              "path": f"{split}/{i}.x"}
                       for i, lab in enumerate(labels)], "label": labels}, features=feats)
    return datasets.DatasetDict(out)


def test_fashion_from_hub_gets_the_same_names_and_encoding(tmp_path, monkeypatch):
    images, labels = tinydata.make_images(3, seed=4)
    hub_names = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot"]  # how zalando-datasets/fashion_mnist spells them
    fake = _hub_like({"train": 30, "test": 10}, hub_names,
                     lambda i, lab: Image.fromarray(images[i % len(images)], mode="L"))
    monkeypatch.setattr(data_sources, "_load_hub", lambda name, **kw: fake)
    report = data.build_cache(tmp_path / "c", source="hub", train_per_class=2)
    dsd = data.load_cache(report["cache_path"])
    assert report["source"] == "hub" and data.class_names(dsd) == tinydata.FASHION_CLASSES
    assert report["counts"]["train"] == {n: 2 for n in tinydata.FASHION_CLASSES}
    assert dsd["test"][0]["image"].mode == "RGB"


def test_hf_imagenet_path_subsets_and_converts(tmp_path, monkeypatch):
    names = [f"class {i}" for i in range(1000)]
    modes = ["RGB", "L", "CMYK", "RGBA"]
    fake = _hub_like({"train": 2000, "validation": 1000}, names,
                     lambda i, lab: Image.new(modes[i % 4], (6, 6)))
    monkeypatch.setattr(data_sources, "_load_hub", lambda name, **kw: fake)
    report = data.build_cache(tmp_path / "c", source="hf_imagenet", train_fraction=0.5, eval_per_class=1)
    assert report["counts"]["train"]["class 7"] == 1 and sum(report["counts"]["train"].values()) == 1000
    dsd = data.load_cache(report["cache_path"])
    assert set(dsd) == {"train", "validation"} and len(dsd["validation"]) == 1000
    assert {Image.open(io.BytesIO(b["bytes"])).mode
            for b in dsd["train"].with_format("arrow")["image"].to_pylist()} == {"RGB"}


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_00_runs_on_a_numeric_imagefolder(tmp_path):
    """The study's failure case end to end: folders "0".."11" (train/ and val/) through notebook 00."""
    names = [str(i) for i in range(12)]
    tinydata.write_imagefolder(tmp_path / "folder" / "train", names, per_class=3)
    tinydata.write_imagefolder(tmp_path / "folder" / "val", names, per_class=2, seed=5)
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "vitprune", "run", "--profile", "smoke", "--only",
                           "00_data_cache", "--runs-root", str(runs), "-p", "source=imagefolder",
                           "-p", f"imagefolder_dir={tmp_path / 'folder'}", "-p", "train_per_class=2",
                           "-p", "eval_per_class=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.loads((runs / "smoke" / "00_data_cache" / "metrics.json").read_text())
    assert metrics["class_names"] == names and metrics["counts"] == {"train": 24, "validation": 12}
    dsd = data.load_cache(metrics["cache_path"])
    for split in dsd.values():
        for row in split:
            assert band_label(row["image"]) == row["label"]  # "10" is label 10, not 2
    exported = sorted(p.name for p in (runs / "smoke" / "00_data_cache" / "imagefolder" / "validation").iterdir())
    assert exported[10] == "010_10"
