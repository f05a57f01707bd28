"""environment.yml parses and lists exactly pyproject's dependencies (so the two cannot drift)."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return [str(s) for s in sections[0]]


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    pip = _pip_section(env)
    assert pip[-1] == "-e .[dev]", "the package itself is installed last, editable, with its dev extra"
    pins = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert sorted(pip[:-1]) == sorted(pins), (
        f"environment.yml and pyproject.toml disagree: only in environment.yml "
        f"{sorted(set(pip[:-1]) - set(pins))}, only in pyproject.toml {sorted(set(pins) - set(pip[:-1]))}")
    assert len(set(pip)) == len(pip), "a dependency is listed twice"
