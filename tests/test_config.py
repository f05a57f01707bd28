"""Typed parameters: the notebook's `parameters` cell is the schema; YAML and -p are checked."""

import json

import pytest

from vitprune.errors import UserError
from vitprune.study import config, run_folders

CELL = '''profile: str = "fmnist"
runs_root: str = ""
run_dir: str = ""
epochs: int = 3
lr: float = 1e-3
locations: list[int] = [3, 6, 9]
checkpoint: str | None = None
distill: bool = True
'''


def write_notebook(path, source=CELL, tagged=True):
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"] if tagged else []},
            "source": source, "outputs": [], "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


@pytest.fixture
def declared(tmp_path):
    return config.declared_parameters(write_notebook(tmp_path / "nb.ipynb"))


def test_defaults_are_parsed_with_types(declared):
    assert declared["epochs"].default == 3
    assert declared["locations"].annotation == "list[int]"
    assert declared["checkpoint"].default is None


def test_valid_values_pass_and_ints_widen_to_float(declared):
    out = config.validate(declared, {"lr": 1, "locations": [2, 4], "checkpoint": "pyproject.toml", "distill": False}, "t")
    assert out == {"lr": 1.0, "locations": [2, 4], "checkpoint": "pyproject.toml", "distill": False}
    assert isinstance(out["lr"], float)


@pytest.mark.parametrize("values, fragment", [
    ({"epoch": 3}, "unknown parameter(s) ['epoch']"),
    ({"epochs": "3"}, "'epochs' must be int"),
    ({"epochs": 2.5}, "'epochs' must be int"),
    ({"epochs": True}, "'epochs' must be int"),
    ({"locations": [3, "six"]}, "'locations' must be list[int]"),
    ({"distill": "yes"}, "'distill' must be bool"),
    ({"lr": None}, "'lr' must be float"),
])
def test_bad_values_are_one_clear_error(declared, values, fragment):
    with pytest.raises(UserError) as err:
        config.validate(declared, values, "params/x.yaml")
    assert fragment in str(err.value)
    assert "params/x.yaml" in str(err.value)


def test_untagged_or_non_literal_cells_are_rejected(tmp_path):
    with pytest.raises(UserError, match="tagged 'parameters'"):
        config.declared_parameters(write_notebook(tmp_path / "a.ipynb", tagged=False))
    with pytest.raises(ValueError, match="only `name: type = literal`"):
        config.declared_parameters(write_notebook(tmp_path / "b.ipynb", CELL + "x = 1\n"))
    with pytest.raises(ValueError, match="must declare"):
        config.declared_parameters(write_notebook(tmp_path / "c.ipynb", "epochs: int = 3\n"))


def test_override_values_are_read_as_yaml():
    assert config.parse_override("base_rate=0.6") == ("base_rate", 0.6)
    assert config.parse_override("locations=[3,6]") == ("locations", [3, 6])
    assert config.parse_override("name=deit_small_patch16_224") == ("name", "deit_small_patch16_224")
    with pytest.raises(UserError, match="key=value"):
        config.parse_override("base_rate")


def test_variant_names_are_stable():
    assert run_folders.variant_name({"base_rate": 0.7}) == "base_rate_0.7"
    assert run_folders.variant_name({"b": 1, "a": 2}) == "a_2__b_1"


def test_train_state_dir_is_keyed_by_settings_and_source_checkpoint(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"v1")
    first = run_folders.train_state_dir(tmp_path / "run", {"lr": 0.1}, sources=[source])
    assert first.parent == tmp_path / "run" / "train_state"
    assert run_folders.train_state_dir(tmp_path / "run", {"lr": 0.1}, sources=[source]) == first
    assert run_folders.train_state_dir(tmp_path / "run", {"lr": 0.2}, sources=[source]) != first
    source.write_bytes(b"retrained")  # a new baseline: old per-epoch state must not be resumed
    assert run_folders.train_state_dir(tmp_path / "run", {"lr": 0.1}, sources=[source]) != first


def test_training_settings_are_every_declared_parameter_but_the_excluded(tmp_path):
    nb = write_notebook(tmp_path / "nb.ipynb", CELL + "threads: int = 2\n")
    values = {"profile": "smoke", "runs_root": "/r", "run_dir": "/r/x", "epochs": 5, "lr": 0.01,
              "locations": [3], "checkpoint": None, "distill": False, "threads": 8, "unrelated": object()}
    settings = config.training_settings(str(nb), values, exclude=["threads"])
    assert settings == {"epochs": 5, "lr": 0.01, "locations": [3], "checkpoint": None, "distill": False}
    # a parameter added to the cell later joins the key (a changed value starts afresh)
    grown = write_notebook(tmp_path / "grown.ipynb", CELL + "threads: int = 2\nmixup: float = 0.0\n")
    key = config.training_settings(str(grown), {**values, "mixup": 0.8}, exclude=["threads"])
    assert key["mixup"] == 0.8
    assert run_folders.train_state_dir(tmp_path, key) != run_folders.train_state_dir(tmp_path, settings)
    with pytest.raises(ValueError, match="thread"):
        config.training_settings(str(nb), values, exclude=["thread"])


def test_yaml_values_read_booleans_as_yaml_1_2_does():
    """Only true/false are booleans: `-p mixed_precision=no` (and `mixed_precision: no` in a
    profile) is accelerate's word "no", not False."""
    assert config.parse_override("mixed_precision=no") == ("mixed_precision", "no")
    assert config.parse_override("flag=true") == ("flag", True)
    assert config.parse_override("flag=False") == ("flag", False)
    assert config.parse_override("mode=off") == ("mode", "off")
    assert config.parse_override("rate=0.6") == ("rate", 0.6)
