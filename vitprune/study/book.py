"""The executed study as static pages a reader opens in a browser (`make book`): an index with
the README's results (default profile), Table 1, the figures and the audit, and each executed
notebook of the pipeline's runs with its outputs. Built with nbconvert (offline, seconds; a
jupyter-book 2 build fetches its theme from the network), into an ignored folder."""

from __future__ import annotations

import html
import json
import re
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


def readme_results() -> str:
    """The README's "Results" section (markdown), or empty."""
    readme = config.project_root() / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    match = re.search(r"^## Results.*?(?=^## |\Z)", text, flags=re.S | re.M)
    return match.group(0) if match else ""


def _notebook_page(path: Path, title: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    exporter.mathjax_url = ""  # offline: no script from a CDN (the study's notebooks hold no LaTeX to typeset)
    exporter.require_js_url = ""
    body, _ = exporter.from_filename(str(path), resources={"metadata": {"name": title}})
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
    figures = Path(figures_dir) if figures_dir else run_folders.figures_dir(profile)
    if not figures.is_dir():
        figures = run_folders.runs_root_or_default(runs_root) / profile / run_folders.FIGURES_NOTEBOOK / run_folders.FIGURES_SUBDIR
    out = Path(out) if out else config.project_root() / BOOK_DIR / profile
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True)
    sections = [f"<h1>ViT pruning study: profile <code>{html.escape(profile)}</code></h1>"]
    results = readme_results() if profile == config.DEFAULT_PROFILE else ""
    for folder in sorted(set(re.findall(r"\((figures/[\w.-]+)/", results))):  # what the README's images show
        if (config.project_root() / folder).is_dir():
            shutil.copytree(config.project_root() / folder, staging / folder, dirs_exist_ok=True)
    if results:
        sections.append("<div id='results'>" + _markdown(results) + "</div>")
    if figures.is_dir():
        shutil.copytree(figures, staging / "figures" / profile, dirs_exist_ok=True)
        for name, title in TABLES.items():
            if (figures / f"{name}.md").is_file():
                sections.append(f"<h2 id='{name}'>{title}</h2>" + _markdown((figures / f"{name}.md").read_text()))
        sections += [f"<figure><img src='figures/{profile}/{png.name}' alt='{png.stem}'>"
                     f"<figcaption>{png.stem}</figcaption></figure>" for png in sorted(figures.glob("*.png"))]
    items = []
    for run, path in notebooks:
        page = "notebooks/" + run.replace("/", "__") + ".html"
        (staging / page).write_text(_notebook_page(path, run))
        items.append(f"<li><a href='{page}'>{html.escape(run)}</a></li>")
    sections.append("<h2 id='notebooks'>Executed notebooks</h2><ul>" + "".join(items) + "</ul>")
    (staging / "index.html").write_text(_page(f"vitprune: {profile}", "\n".join(sections)))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return {"out": out, "pages": 1 + len(notebooks), "seconds": time.perf_counter() - start}
