"""No drift between the code and what describes it: every package's docstring names exactly the
modules it has (in backticks), and pyproject.toml names only modules that exist."""

import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vitprune"
PACKAGES = sorted(p.parent for p in PKG.rglob("__init__.py") if p.parent != PKG)


def _docstring(path: Path) -> str:
    import ast

    return ast.get_docstring(ast.parse(path.read_text())) or ""


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_package_docstring_names_its_modules_and_no_others(package):
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    named = set(re.findall(r"`([a-z_][a-z0-9_]*)`", _docstring(package / "__init__.py")))
    assert modules <= named, f"{package.name}/__init__.py does not name {sorted(modules - named)}"
    assert named <= modules, f"{package.name}/__init__.py names {sorted(named - modules)}, not modules of it"


def test_pyproject_names_only_modules_that_exist():
    text = (PKG.parent / "pyproject.toml").read_text()
    for dotted in set(re.findall(r"\bvitprune(?:\.[a-z_]+)+", text)):
        parts = dotted.split(".")[1:]
        assert (PKG.joinpath(*parts).with_suffix(".py")).is_file() or PKG.joinpath(*parts).is_dir(), dotted
