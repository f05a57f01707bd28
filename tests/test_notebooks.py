"""Committed notebooks: outputs stripped, a tagged parameters cell, and every profile valid."""

import json

import pytest

from vitprune.study import config

ROOT = config.project_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROFILES = sorted(p.name for p in (ROOT / "params").iterdir() if p.is_dir())


def test_there_are_notebooks_and_profiles():
    assert NOTEBOOKS, "no notebooks committed"
    assert {"fmnist", "smoke", "imagenet"} <= set(PROFILES)
    assert {p.stem for p in NOTEBOOKS} <= set(config.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_stripped_and_parameters_tagged(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell must be tagged 'parameters'"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"code cells {dirty} carry outputs: run `python tools/nbtool.py strip {path}`"
    assert "papermill" not in nb["metadata"], "an executed copy was committed"
    config.declared_parameters(path)  # only `name: type = literal` lines, injected names declared


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates_against_the_notebooks(profile):
    for path in NOTEBOOKS:
        config.profile_params(profile, path.stem)
    config.profile_sweep(profile)
    stray = [p.name for p in (ROOT / "params" / profile).glob("*.yaml")
             if p.stem not in config.NOTEBOOKS and p.name != config.SWEEP_FILE]
    assert not stray, f"params/{profile} holds files no notebook reads: {stray}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_parses_every_parameter_line(path, caplog):
    """papermill's own parser (used for `papermill --help-notebook` and for warning about unknown
    parameters) must see every declared parameter: a second `=` on a line (e.g. `>=` in a comment)
    makes it skip the line and warn on every run."""
    from papermill.translators import PythonTranslator

    cell = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    with caplog.at_level("WARNING", logger="papermill"):
        parsed = PythonTranslator.inspect({"source": "".join(cell["source"])})
    assert not [r.getMessage() for r in caplog.records], "papermill could not parse a parameter line"
    assert [p.name for p in parsed] == list(config.declared_parameters(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_are_narrative_and_calls(path):
    """No code cell over 25 lines (the parameters cell is a list of declarations); the training notebooks (01-04) draw no figure themselves: they
    call study.run_plots (figures of one run) or study.plots (the study's, also notebook 05's)."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []):
            continue
        assert len(source.splitlines()) <= 25, f"{path.name}: code cell {i} has {len(source.splitlines())} lines"
        if path.stem[:2] in ("01", "02", "03", "04"):
            assert "plt." not in source and "subplots(" not in source, f"{path.name}: code cell {i} draws a figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_defaults_are_the_default_profile(path):
    """A notebook opened in JupyterLab runs what the pipeline runs first: its parameters cell's
    defaults are the default profile's values (and the first point of its sweep)."""
    declared = config.declared_parameters(path)
    wanted = config.lab_values(config.DEFAULT_PROFILE, path.stem)
    drift = {k: (declared[k].default, v) for k, v in wanted.items()
             if k in declared and (declared[k].default != v or type(declared[k].default) is not type(v))}
    assert not drift, f"{path.name}: defaults differ from params/{config.DEFAULT_PROFILE}/ (default, profile): {drift}"
    first = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    assert f"`{config.DEFAULT_PROFILE}`" in "".join(first["source"]), f"{path.name}: first cell must name its profile"
