"""The README cannot go stale: its Python example runs as written, and every number of its
findings and its Table 1 excerpt is one the committed figures' files hold."""

import csv
import math
import re

from vitprune.study import config

ROOT = config.project_root()
README = (ROOT / "README.md").read_text()
FIGURES = ROOT / "figures" / "fmnist-3seeds"
# numbers the README cites from the literature, not from our runs
CITED = {"79.8", "79.3", "0.5"}  # DynamicViT's DeiT-S at rho 0.7 (Rao et al. 2021)
NUMBER = re.compile(r"[−-]?\d+\.\d+")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(0)


def test_the_python_example_runs_as_written(capsys):
    code = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "GMACs per image" in printed and "speedup" in printed


def _forms(value: float) -> set[str]:
    """How a measured value may be printed: 2 or 1 decimals, with or without its sign."""
    return {f"{v:.{d}f}" for v in (value, abs(value)) for d in (1, 2)}


def known_numbers() -> set[str]:
    known: set[str] = set()
    with open(FIGURES / "table1.csv") as f:
        for row in csv.DictReader(f):
            for key, text in row.items():
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    known |= _forms(value * 1000 if key == "gmacs" else value)  # MACs in M
    for name in ("equal_macs.md", "table1.md", "edge_latency.md"):
        for text in NUMBER.findall((FIGURES / name).read_text()):
            known |= _forms(float(text.replace("−", "-")))
    return known


def test_every_number_of_the_findings_is_in_the_committed_figures():
    results = section("Results")
    known = known_numbers()
    numbers = [n.replace("−", "-") for n in NUMBER.findall(results)]
    assert len(numbers) > 80  # the table excerpt and the five findings
    missing = sorted({n for n in numbers if n not in known and n.lstrip("-") not in CITED})
    assert not missing, f"README numbers not in {FIGURES.relative_to(ROOT)}: {missing}"
