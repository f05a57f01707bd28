"""Developer tool: build a notebook from a percent-format script, or strip one.

    python tools/nbtool.py build SRC.py notebooks/NN_name.ipynb
    python tools/nbtool.py script notebooks/NN_name.ipynb SRC.py   # the reverse, to edit as text
    python tools/nbtool.py strip notebooks/*.ipynb
    python tools/nbtool.py defaults notebooks/*.ipynb   # parameters cell = params/fmnist/ (the lab runs it)

SRC.py uses `# %%` for code cells and `# %% [markdown]` for markdown cells (lines of a
markdown cell start with `# `). The first code cell gets the `parameters` tag. Outputs are
never written, so committed notebooks stay stripped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat

from vitprune.study import config


def build(src: Path, out: Path) -> None:
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in src.read_text().splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    first_code = next(c for c in cells if c.cell_type == "code")
    first_code.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(config.KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    out.write_text(nbformat.writes(nb) + "\n")


def script(path: Path, out: Path) -> None:
    """Write a notebook as the percent-format source `build` reads (build(script(nb)) == nb)."""
    nb = nbformat.read(path, as_version=4)
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            body = "\n".join(f"# {line}" if line else "#" for line in cell.source.splitlines())
            parts.append(f"# %% [markdown]\n{body}\n")
        else:
            parts.append(f"# %%\n{cell.source}\n")
    out.write_text("\n".join(parts))


def strip(path: Path) -> None:
    """Rewrite a notebook as committed (the same stripping `make lab` applies when it saves)."""
    nb = nbformat.from_dict(config.stripped_notebook(nbformat.read(path, as_version=4)))
    path.write_text(nbformat.writes(nb) + "\n")


def defaults(path: Path) -> list[str]:
    """Set the parameters cell's defaults to the default profile's values (`config.lab_values`:
    params/fmnist/ and the first point of its sweep), keeping each line's type and comment; returns
    the names changed. tests/test_notebooks.py fails when they drift."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    wanted = config.lab_values(config.DEFAULT_PROFILE, path.stem)
    lines, changed = [], []
    for line in cell.source.splitlines():
        head, sep, rest = line.partition(" = ")
        name = head.split(":")[0].strip()
        if sep and name in wanted:
            literal, hash_, comment = rest.partition("  #")
            new = json.dumps(wanted[name]) if isinstance(wanted[name], str) else repr(wanted[name])
            if literal.strip() != new:
                changed.append(name)
            line = f"{head} = {new}" + (f"  #{comment}" if hash_ else "")
        lines.append(line)
    cell.source = "\n".join(lines)
    path.write_text(nbformat.writes(nb) + "\n")
    return changed


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    if verb == "build":
        build(Path(args[0]), Path(args[1]))
    elif verb == "script":
        script(Path(args[0]), Path(args[1]))
    elif verb == "strip":
        for arg in args:
            strip(Path(arg))
    elif verb == "defaults":
        for arg in args:
            print(arg, defaults(Path(arg)) or "unchanged")
    else:
        sys.exit(__doc__)
