"""Committed notebooks: outputs stripped, a tagged parameters cell, and every profile valid."""

import ast
import json
import os

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
    config.profile_points(profile, study=True)
    baseline = ROOT / "params" / profile / config.BASELINE_FILE
    if baseline.exists():
        config.validate(config.declared_parameters("01_deit_baseline"), config.load_yaml(baseline), str(baseline))
    stray = [p.name for p in (ROOT / "params" / profile).glob("*.yaml")
             if p.stem not in config.NOTEBOOKS and p.name not in config.PROFILE_FILES]
    assert not stray, f"params/{profile} holds files no notebook reads: {stray}"


def test_the_lab_trains_what_make_baseline_trains():
    """Notebook 01 opened in the lab evaluates the released baseline; set train=True and
    checkpoint="" and it trains with make baseline's recipe (params/fmnist/baseline.yaml)."""
    declared = config.declared_parameters("01_deit_baseline")
    recipe = config.load_yaml(ROOT / "params" / config.DEFAULT_PROFILE / config.BASELINE_FILE)
    drift = {k: (declared[k].default, v) for k, v in recipe.items()
             if k not in ("train", "checkpoint", "num_processes", "threads") and declared[k].default != v}
    assert not drift, f"01's parameters cell differs from baseline.yaml (default, baseline.yaml): {drift}"
    assert recipe["train"] and not recipe["checkpoint"] and not declared["train"].default


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
    """No code cell over 25 lines (the parameters cell is a list of declarations), defining a function
    or class, moving or deleting files or writing arrays; the training notebooks (01-04) draw no figure
    themselves: they call study.run_plots (figures of one run) or study.plots (the study's, also 05's)."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []):
            continue
        assert len(source.splitlines()) <= 25, f"{path.name}: code cell {i} has {len(source.splitlines())} lines"
        if path.stem[:2] in ("01", "02", "03", "04"):
            assert "plt." not in source and "subplots(" not in source, f"{path.name}: code cell {i} draws a figure"
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):  # library work lives in the package, where tests reach it
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: code cell {i} defines {getattr(node, 'name', 'a lambda')}"
            called = ast.unparse(node.func) if isinstance(node, ast.Call) else ""
            assert not called.startswith(("shutil.", "os.replace", "os.rename", "os.remove", "np.save")) \
                and not called.endswith((".unlink", ".rename", ".write_bytes")), f"{path.name}: code cell {i} calls {called}"


# what each notebook's code cells may not name: 02 fine-tunes whichever token method `method` names and
# 04 takes its comparators from the registry (`comparators`), so the methods live in their declarations
NOT_NAMED = {"02_token_pruning": ("dynamicvit", "dynamicvit_io", "dynamicvit_loss", "training_free", "merging"),
             "04_combination": ("training_free", "merging")}


@pytest.mark.parametrize("stem", sorted(NOT_NAMED))
def test_methods_come_from_the_registry(stem):
    nb = json.loads((config.project_root() / "notebooks" / f"{stem}.ipynb").read_text())
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        if "parameters" in cell["metadata"].get("tags", []):
            continue
        code = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith("%"))
        for node in ast.walk(ast.parse(code)):
            names = [a.name.split(".")[-1] for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) \
                else [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module.split(".")[-1])
            named = sorted(set(names) & set(NOT_NAMED[stem]))
            assert not named, f"{stem}: code cell {i} names {named}"


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



def test_a_lab_save_writes_the_committed_notebook(tmp_path):
    """What JupyterLab sends on (auto)save -- outputs, execution counts, kernel metadata -- goes
    through `make lab`'s pre-save hook: notebooks/ keep their committed bytes (git status stays
    clean); a notebook elsewhere (a copy under runs/) keeps its outputs."""
    import shutil

    from jupyter_server.services.contents.filemanager import FileContentsManager

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "runs").mkdir()
    name = NOTEBOOKS[1].name
    shutil.copy(NOTEBOOKS[1], tmp_path / "notebooks" / name)
    shutil.copy(NOTEBOOKS[1], tmp_path / "runs" / name)
    manager = FileContentsManager(root_dir=str(tmp_path), pre_save_hook="vitprune.cli.lab.strip_before_save")
    for folder in ("notebooks", "runs"):
        model = manager.get(f"{folder}/{name}")
        code = next(c for c in model["content"]["cells"] if c["cell_type"] == "code")
        code.update(execution_count=3, outputs=[{"output_type": "stream", "name": "stderr", "text": "epoch 1\n"}])
        code["metadata"]["execution"] = {"iopub.status.busy": "2026-12-03T17:00:00Z"}
        model["content"]["metadata"]["language_info"] = {"name": "python", "version": "3.11.2"}
        manager.save(model, f"{folder}/{name}")
    assert (tmp_path / "notebooks" / name).read_bytes() == NOTEBOOKS[1].read_bytes()
    assert '"execution_count": 3' in (tmp_path / "runs" / name).read_text()


def test_lab_command_uses_the_pipeline_kernel_settings():
    from vitprune.cli import lab

    command = lab.lab_command(port=9999, token="t", open_browser=False)
    assert f"--ServerApp.root_dir={ROOT}" in command and "--LabApp.default_url=/lab/tree/notebooks" in command
    assert "--KernelManager.transport=ipc" in command and "--ContentsManager.pre_save_hook=vitprune.cli.lab.strip_before_save" in command
    assert ("--allow-root" in command) == (os.geteuid() == 0)
