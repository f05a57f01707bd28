"""The executed study as static pages a reader opens in a browser (`make book`): an index with
the numbers of the runs it renders (their notebook 05's Table 1, comparisons, figures and audit,
never another run's text), and each executed notebook of the pipeline's runs with its outputs,
its parameters folded under the values that differ from the notebook's defaults. Built with
nbconvert (offline, seconds; a jupyter-book 2 build fetches its theme from the network), into an
ignored folder."""

from __future__ import annotations

import ast
import html
import json
import shutil
import time
from pathlib import Path
from typing import Any

from vitprune.errors import UserError
from vitprune.study import config, results, run_folders

BOOK_DIR = "book"  # <repo>/book/<profile>/ (ignored)
TABLES = {"table1": "Table 1", "equal_macs": "Methods at equal MACs", "audit": "Audit of the study's numbers",
          "edge_latency": "Edge latency (onnxruntime)"}  # notebook 05's markdown files, in reading order
STYLE = """body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;line-height:1.5}
nav a{margin-right:1rem} table{border-collapse:collapse;font-size:.85rem} td,th{border:1px solid #ccc;padding:.2rem .4rem}
img{max-width:100%} figure{margin:1rem 0} figcaption{color:#555;font-size:.9rem} pre{overflow-x:auto}"""


def _markdown(text: str) -> str:
    import mistune  # nbconvert's markdown renderer

    return mistune.create_markdown(plugins=["table"], escape=False)(text)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><nav><a href='#results'>Results</a><a href='#table1'>Table 1</a>"
            f"<a href='#notebooks'>Executed notebooks</a></nav>{body}</body></html>")


def executed_notebooks(runs_root: str | Path | None, profile: str) -> list[tuple[str, Path]]:
    """(run name, executed notebook) of every run the pipeline finished (`results.not_a_run`), in
    notebook order; lab runs, unfinished folders and folders changed since are not the study's."""
    root = run_folders.runs_root_or_default(runs_root) / profile
    found = []
    for notebook in config.NOTEBOOKS:
        for folder in run_folders.run_folders(runs_root, profile, notebook):
            executed = folder / f"{notebook}.ipynb"
            manifest = folder / run_folders.MANIFEST_FILE
            if executed.is_file() and manifest.is_file() and \
                    results.not_a_run(folder, json.loads(manifest.read_text())) is None:
                found.append((folder.relative_to(root).as_posix(), executed))
    return found


def _literals(source: str) -> dict[str, Any]:
    """`name = literal` assignments of papermill's injected cell (others skipped)."""
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def fold_parameters(nb: dict, notebook: str) -> dict:
    """The executed notebook with its parameters cell and papermill's injected cell replaced by one
    markdown cell: the values that differ from the notebook's defaults in view, every line folded."""
    defaults = {k: p.default for k, p in config.declared_parameters(config.notebook_path(notebook)).items()}
    cells, folded, injected = [], [], {}
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            source = "".join(cell["source"])
            folded.append(source)
            if "injected-parameters" in tags:
                injected = _literals(source)
            continue
        cells.append(cell)
    if not folded:
        return nb
    differ = {k: v for k, v in injected.items() if k not in config.INJECTED and defaults.get(k, v) != v}
    shown = ", ".join(f"`{k} = {v!r}`" for k, v in differ.items()) or "none"
    text = (f"**Parameters.** Values this run changed from the notebook's defaults: {shown}.\n\n"
            "<details><summary>Every parameter (the notebook's cell, then what the pipeline injected)</summary>\n\n"
            + "".join(f"<pre>{html.escape(s)}</pre>\n" for s in folded) + "</details>\n")
    first = next(i for i, c in enumerate(nb["cells"]) if set(c.get("metadata", {}).get("tags", []))
                 & {"parameters", "injected-parameters"})
    cells.insert(first, {"cell_type": "markdown", "id": "vitprune-parameters", "metadata": {}, "source": text})
    return {**nb, "cells": cells}


def _notebook_page(path: Path, title: str, notebook: str) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    exporter.mathjax_url = ""  # offline: no script from a CDN (formulas show as their TeX source)
    exporter.require_js_url = ""
    nb = nbformat.from_dict(fold_parameters(nbformat.read(str(path), as_version=4), notebook))
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def build(profile: str = config.DEFAULT_PROFILE, runs_root: str | Path | None = None,
          figures_dir: str | Path | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Write the book of `profile` to `out` (default <repo>/book/<profile>/, replaced whole);
    returns {"out", "pages", "seconds"}."""
    start = time.perf_counter()
    notebooks = executed_notebooks(runs_root, profile)
    if not notebooks:
        raise UserError(f"no finished runs of profile {profile!r} under {run_folders.runs_root_or_default(runs_root)}: "
                        f"run `python -m vitprune run --profile {profile}` (make reproduce) first")
    # the figures of these runs (their notebook 05), never the repository's committed ones from another run
    figures = Path(figures_dir) if figures_dir else (
        run_folders.runs_root_or_default(runs_root) / profile / run_folders.FIGURES_NOTEBOOK / run_folders.FIGURES_SUBDIR)
    out = Path(out) if out else config.project_root() / BOOK_DIR / profile
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True)
    root = run_folders.runs_root_or_default(runs_root) / profile
    sections = [f"<h1>ViT pruning study: profile <code>{html.escape(profile)}</code></h1>",
                f"<p id='results'>The numbers, tables and figures below are those of the runs these pages render "
                f"({len(notebooks)} executed notebooks under <code>{html.escape(str(root))}</code>), as their "
                f"notebook 05 wrote them.</p>"]
    if not figures.is_dir():
        sections.append("<p>Notebook 05 has not run on these runs: no Table 1 or figures yet.</p>")
    else:
        shutil.copytree(figures, staging / "figures" / profile, dirs_exist_ok=True)
        for name, title in TABLES.items():
            if (figures / f"{name}.md").is_file():
                sections.append(f"<h2 id='{name}'>{title}</h2>" + _markdown((figures / f"{name}.md").read_text()))
        sections += [f"<figure><img src='figures/{profile}/{png.name}' alt='{png.stem}'>"
                     f"<figcaption>{png.stem}</figcaption></figure>" for png in sorted(figures.glob("*.png"))]
    items = []
    for run, path in notebooks:
        page = "notebooks/" + run.replace("/", "__") + ".html"
        (staging / page).write_text(_notebook_page(path, run, path.stem))
        items.append(f"<li><a href='{page}'>{html.escape(run)}</a></li>")
    sections.append("<h2 id='notebooks'>Executed notebooks</h2><ul>" + "".join(items) + "</ul>")
    (staging / "index.html").write_text(_page(f"vitprune: {profile}", "\n".join(sections)))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return {"out": out, "pages": 1 + len(notebooks), "seconds": time.perf_counter() - start}
