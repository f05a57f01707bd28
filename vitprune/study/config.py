"""Typed flat parameters: read them from a notebook's `parameters` cell, validate overrides.

The tagged `parameters` cell of each notebook is the single source of the typed defaults:
every line is an annotated literal, `name: type = value  # comment`. Profiles
(`params/<profile>/<notebook>.yaml`) and `-p key=value` overrides are checked against it
before anything runs: unknown keys and values of the wrong type are an error (papermill
itself only warns and injects them anyway).

Supported annotations: `int`, `float` (ints accepted), `str`, `bool`, `list[T]`, and
`T | None`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from vitprune import param_rules
from vitprune.errors import UserError
from vitprune.study import release

NOTEBOOKS = (
    "00_data_cache",
    "01_deit_baseline",
    "02_token_pruning",
    "03_block_pruning",
    "04_combination",
    "05_analysis",
)
PROFILES_DIR = "params"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false (any case) are bools, so a
    bare `no`, `yes`, `on`, `off` stays a string (`mixed_precision: no` is the word accelerate
    takes, not False), as YAML 1.2 and papermill's own parameter parsing read them."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def read_yaml(text: str) -> Any:
    """YAML text -> Python values, with YAML 1.2 booleans (see _Yaml12Loader)."""
    return yaml.load(text, Loader=_Yaml12Loader)
SWEEP_FILE = "sweep.yaml"
STUDY_FILE = "study.yaml"  # named runs `run --study` (make study) adds to sweep.yaml's: its `points` only
BASELINE_FILE = "baseline.yaml"  # notebook 01's parameters for training the released baseline (make baseline)
PROFILE_FILES = (SWEEP_FILE, STUDY_FILE, BASELINE_FILE)  # the YAML files of a profile that are not a notebook's
POINTS = "points"
"""sweep.yaml's key for named runs beside a notebook's sweep: `points: {notebook: {name: {param: value}}}`,
one run per seed each, in a folder of their name (`control__seed_0`). A control (`{control: true}`:
the same fine-tune with nothing pruned) is one; so is the study's linear-schedule rate."""
# Injected by the pipeline into every notebook; every notebook declares them.
INJECTED = ("profile", "runs_root", "run_dir")
# Set by the pipeline where declared (notebook 05: the fine-tune seeds it gathers, `run --seeds N`, and
# whether study.yaml's runs count, `run --study`).
PIPELINE_SET = ("seeds", "study")
# Fine-tunes repeated over seeds (`run --seeds N`, from the same baseline): every seed is a run
# folder of its own (`..._seed_<s>`), and a seed's run reads the same seed's upstream runs, so
# methods compare seed by seed (paired).
SEEDED = ("02_token_pruning", "03_block_pruning", "04_combination")
# What each notebook's runs read: a run is out of date when one of these changed (from a SEEDED
# upstream, only the same seed's runs count for a SEEDED run).
UPSTREAM = {
    "00_data_cache": (),
    "01_deit_baseline": ("00_data_cache",),
    "02_token_pruning": ("00_data_cache", "01_deit_baseline"),
    "03_block_pruning": ("00_data_cache", "01_deit_baseline"),
    "04_combination": ("00_data_cache", "01_deit_baseline", "02_token_pruning", "03_block_pruning"),
    "05_analysis": ("00_data_cache", "01_deit_baseline", "02_token_pruning", "03_block_pruning", "04_combination"),
}


def project_root() -> Path:
    """The repository root: $VITPRUNE_ROOT, else the first parent of the cwd holding pyproject.toml."""
    if os.environ.get("VITPRUNE_ROOT"):
        return Path(os.environ["VITPRUNE_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").exists() and (candidate / "vitprune").is_dir():
            return candidate
    package_parent = Path(__file__).resolve().parents[2]  # vitprune/study/config.py -> the repository
    if (package_parent / "pyproject.toml").exists():
        return package_parent
    return here


def point_axes(profile: str, notebook: str) -> list[str]:
    """The parameters that name a run folder of `notebook` in `profile`: its sweep axes, and
    `seed` for a SEEDED notebook (one that declares it)."""
    axes = list(profile_sweep(profile).get(notebook, {}))
    return axes + ["seed"] if is_seeded(notebook) else axes


def point_named(profile: str, notebook: str, values: dict[str, Any]) -> str | None:
    """The name of the profile's named point (sweep.yaml or study.yaml `points`) that `values` are
    at: every parameter the point sets has its value there (None: a point of the sweep)."""
    matches = [(len(point), name) for name, point in profile_points(profile, study=True).get(notebook, {}).items()
               if all(values.get(k) == v for k, v in point.items())]
    return max(matches)[1] if matches else None  # the most specific: {method: evit, control: true} over {control: true}


def is_seeded(notebook: str) -> bool:
    """Whether the pipeline repeats `notebook` over fine-tune seeds (SEEDED, and it declares `seed`)."""
    return notebook in SEEDED and "seed" in declared_parameters(notebook)


def notebook_path(notebook: str) -> Path:
    path = project_root() / "notebooks" / f"{notebook}.ipynb"
    if not path.exists():
        raise UserError(f"notebook {notebook!r} not found at {path}; known notebooks: {', '.join(NOTEBOOKS)}")
    return path


# ---------------------------------------------------------------- parameters cell


class Param:
    """One declared parameter: its annotation (as written) and default value."""

    def __init__(self, name: str, annotation: str, default: Any):
        self.name, self.annotation, self.default = name, annotation, default
        self._type = ast.parse(annotation, mode="eval").body

    def check(self, value: Any, source: str) -> Any:
        """Return the value (ints widened to float where a float is declared) or raise UserError."""
        ok, coerced = _matches(self._type, value)
        if not ok:
            raise UserError(
                f"{source}: parameter {self.name!r} must be {self.annotation}, got {value!r} "
                f"({type(value).__name__}); fix the value in the YAML or the -p override")
        return coerced

    def __repr__(self) -> str:
        return f"{self.name}: {self.annotation} = {self.default!r}"


def _matches(node: ast.expr, value: Any) -> tuple[bool, Any]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation: not evaluated by Python
        return _matches(ast.parse(node.value, mode="eval").body, value)
    union = None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        union = (node.left, node.right)
    elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Union":
        # `Union[int, str]`: papermill's parameter parser reads this spelling, not `int | str`
        union = node.slice.elts if isinstance(node.slice, ast.Tuple) else (node.slice,)
    if union is not None:
        for side in union:
            ok, coerced = _matches(side, value)
            if ok:
                return True, coerced
        return False, value
    if isinstance(node, ast.Constant) and node.value is None:
        return value is None, value
    if isinstance(node, ast.Name):
        if node.id == "bool":
            return isinstance(value, bool), value
        if node.id == "int":
            return isinstance(value, int) and not isinstance(value, bool), value
        if node.id == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True, float(value)
            return False, value
        if node.id == "str":
            return isinstance(value, str), value
        if node.id == "None":
            return value is None, value
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "list":
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for item in value:
            ok, coerced = _matches(node.slice, item)
            if not ok:
                return False, value
            out.append(coerced)
        return True, out
    raise ValueError(f"unsupported parameter annotation {ast.unparse(node)!r}")


KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def stripped_notebook(nb: dict) -> dict:
    """A notebook as committed: no outputs or execution counts, cells keep only their tags, the
    notebook only its kernelspec and language name (what JupyterLab or papermill add goes)."""
    out = {**nb, "metadata": {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}, "cells": []}
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags")
        cell = {**cell, "metadata": {"tags": list(tags)} if tags else {}}
        if cell.get("cell_type") == "code":
            cell.update(outputs=[], execution_count=None)
        out["cells"].append(cell)
    return out


def parameters_cell(nb: dict) -> dict:
    """The first code cell; it must carry the `parameters` tag."""
    code_cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not code_cells or "parameters" not in code_cells[0].get("metadata", {}).get("tags", []):
        raise UserError("the first code cell of the notebook must be tagged 'parameters'")
    return code_cells[0]


def declared_parameters(notebook: str | os.PathLike) -> dict[str, Param]:
    """Parse `name: type = literal` lines of a notebook's parameters cell."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else notebook_path(str(notebook))
    nb = json.loads(path.read_text())
    source = "".join(parameters_cell(nb)["source"])
    params: dict[str, Param] = {}
    for stmt in ast.parse(source).body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None):
            raise ValueError(f"{path.name}: parameters cell may hold only `name: type = literal` lines, "
                             f"found {ast.unparse(stmt)!r}")
        name = stmt.target.id
        param = Param(name, ast.unparse(stmt.annotation), ast.literal_eval(stmt.value))
        param.check(param.default, f"{path.name} default")
        params[name] = param
    missing = [k for k in INJECTED if k not in params]
    if missing:
        raise ValueError(f"{path.name}: parameters cell must declare {missing}")
    return params


def validate(declared: dict[str, Param], values: dict[str, Any], source: str,
             plugins: Sequence[str] = ()) -> dict[str, Any]:
    """Check every key, type and range (`param_rules`); return the values with types normalised.
    A value may name a method of the `plugins` the values set, or of `plugins` (the profile's, when
    `values` are an override or a sweep point of it)."""
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise UserError(
            f"{source}: unknown parameter(s) {unknown}; this notebook accepts: {', '.join(sorted(declared))}")
    checked = {key: declared[key].check(value, source) for key, value in values.items()}
    from vitprune.methods import registry  # local: registering the methods declares their parameters' rules; the run processes stay free of torch
    plugins = checked.get("plugins") or list(plugins)
    param_rules.check("plugins", plugins, source)
    with registry.plugged_in(plugins, root=project_root()):  # the methods the values below may name
        for key, value in checked.items():
            param_rules.check(key, value, source)
    for key, value in checked.items():
        if key in param_rules.PATHS and value:
            path = resolve_path(value)
            if release.is_release(path):  # the released baseline: the file its record names, or one line why not
                release.check(path, shown_as=value, where=f"{source}: parameter {key!r}: ")
            elif not path.exists():
                raise UserError(f"{source}: parameter {key!r} names {value}, which does not exist; "
                                f"give an existing path (relative paths start at {project_root()}) or \"\" for none")
    return checked


def resolve_path(value: str | os.PathLike) -> Path:
    """A path parameter as every notebook reads it: relative paths start at the repository root
    (the pipeline's kernels run there, a JupyterLab kernel in notebooks/)."""
    return project_root() / Path(value).expanduser()


def released_inputs(values: dict[str, Any]) -> dict[str, str]:
    """{parameter: sha256} of the released files a run's path parameters name: part of its run key,
    so a new release re-runs what starts from it (the path alone stays the same)."""
    out = {}
    for key in param_rules.PATHS:
        value = values.get(key)
        if value and release.record_path(resolve_path(value)).is_file():
            out[key] = json.loads(release.record_path(resolve_path(value)).read_text()).get("sha256")
    return out


# ---------------------------------------------------------------- profiles


def profile_dir(profile: str) -> Path:
    path = project_root() / PROFILES_DIR / profile
    if not path.is_dir():
        known = sorted(p.name for p in (project_root() / PROFILES_DIR).iterdir() if p.is_dir())
        raise UserError(f"unknown profile {profile!r}; known profiles: {', '.join(known)}")
    return path


def _read_mapping(path: Path, shape: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, or one UserError line saying where it is broken."""
    try:
        data = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where} ({problem}); fix the file") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be {shape}, found a {type(data).__name__}")
    return data


def load_yaml(path: Path) -> dict[str, Any]:
    data = _read_mapping(path, "a flat mapping of parameter: value")
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"{path}: parameters must be flat, {nested} hold mappings")
    return data


def profile_params(profile: str, notebook: str) -> dict[str, Any]:
    """The profile's YAML for one notebook, validated (missing file = all defaults)."""
    path = profile_dir(profile) / f"{notebook}.yaml"
    values = load_yaml(path) if path.exists() else {}
    return validate(declared_parameters(notebook), values, str(path.relative_to(project_root())))


DEFAULT_PROFILE = "fmnist"  # what `make reproduce` runs and what a notebook opened in the lab runs


def lab_values(profile: str, notebook: str) -> dict[str, Any]:
    """What a run of `notebook` in `profile` sets: the profile's YAML and the first value of each
    of its sweep axes. For DEFAULT_PROFILE these are the defaults of the notebook's parameters
    cell, so Run All in the lab runs the pipeline's first run of it (tests/test_notebooks.py)."""
    path = profile_dir(profile) / f"{notebook}.yaml"
    values = load_yaml(path) if path.exists() else {}
    values.update({k: v[0] for k, v in profile_sweep(profile).get(notebook, {}).items()})
    return values


def _plugins_of(folder: Path, notebook: str) -> list[str]:
    """The `plugins` a profile folder's YAML gives `notebook` (its sweep values may name their methods)."""
    path = folder / f"{notebook}.yaml"
    return list((load_yaml(path) if path.exists() else {}).get("plugins") or [])


def profile_sweep(profile: str) -> dict[str, dict[str, list]]:
    """`params/<profile>/sweep.yaml`: {notebook: {param: [values...]}}; one run per combination
    (its `points` are `profile_points`)."""
    path = profile_dir(profile) / SWEEP_FILE
    if not path.exists():
        return {}
    data = _read_mapping(path, "a mapping of notebook: {param: [values]}")
    data.pop(POINTS, None)
    for notebook, axes in data.items():
        if notebook not in NOTEBOOKS or not isinstance(axes, dict):
            raise UserError(f"{path}: keys must be notebook names mapping to {{param: [values]}} (or {POINTS!r}), "
                            f"got {notebook!r}")
        declared, plugins = declared_parameters(notebook), _plugins_of(path.parent, notebook)
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"{path}: {notebook}.{key} must be a non-empty list")
            for value in values:
                validate(declared, {key: value}, f"{path} ({notebook})", plugins)
    _read_points(path)
    return data


def _read_points(path: Path, only_points: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """The `points` of a sweep or study file, checked: {notebook: {name: {param: value}}}; a study
    file (`only_points`) holds nothing else."""
    if not path.exists():
        return {}
    data = _read_mapping(path, f"a mapping with notebook sweeps and {POINTS!r}")
    others = sorted(k for k in data if k != POINTS)
    if only_points and others:
        raise UserError(f"{path}: holds only {POINTS!r} (the sweep axes are sweep.yaml's); found {others}")
    points = data.get(POINTS) or {}
    shape = f"{POINTS}: {{notebook: {{name: {{param: value}}}}}}"
    if not isinstance(points, dict):
        raise UserError(f"{path}: must hold {shape}")
    for notebook, named in points.items():
        if notebook not in NOTEBOOKS or not is_seeded(notebook) or not isinstance(named, dict):
            raise UserError(f"{path}: {POINTS} are runs of the fine-tunes {', '.join(SEEDED)}: {shape}; got {notebook!r}")
        for name, values in named.items():
            if not re.fullmatch(r"[a-z][a-z0-9_.]*", str(name)) or "__" in str(name) or not isinstance(values, dict):
                raise UserError(f"{path}: {POINTS}.{notebook}.{name}: a point is a name (lower case, digits, _ and .) "
                                "mapping to {param: value}")
            validate(declared_parameters(notebook), values, f"{path} ({POINTS}.{notebook}.{name})",
                     _plugins_of(path.parent, notebook))
    return points


def profile_points(profile: str, study: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """The named runs of a profile: sweep.yaml's `points`, with study.yaml's added when `study`
    (`run --study`, make study): {notebook: {name: {param: value}}}, one run per seed each."""
    folder = profile_dir(profile)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in [folder / SWEEP_FILE] + ([folder / STUDY_FILE] if study else []):
        for notebook, named in _read_points(path, only_points=path.name == STUDY_FILE).items():
            out.setdefault(notebook, {}).update(named)
    return out



def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (so 0.6 is a float, true a bool, [3,6] a list)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise UserError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip(), value


def params_hash(values: dict[str, Any]) -> str:
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def training_settings(notebook: str, values: dict[str, Any], exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The resume key of a training notebook, for `train_state_dir`: every parameter the
    notebook declares, with its value from `values` (the notebook's `globals()`), except the
    injected ones and `exclude` (parameters that only change evaluation, speed or output). A
    parameter added later joins the key unless excluded, so a changed new setting starts
    afresh instead of resuming a run trained differently."""
    declared = declared_parameters(notebook)
    stray = sorted(set(exclude) - set(declared))
    if stray:
        raise ValueError(f"{notebook}: exclude names parameters it does not declare: {stray}")
    return {name: values[name] for name in declared if name not in INJECTED and name not in exclude}
