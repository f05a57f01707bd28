"""`make book`: the executed smoke study as static pages, opened in a real browser (headless
Chromium, the system's, driven by playwright): every page loads, every image decodes, no page
shows a traceback or a script error."""

import shutil

import pytest

from vitprune.study import book

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.notebook
def test_book_pages_load_in_a_browser(smoke_runs, tmp_path):
    built = book.build("smoke", runs_root=smoke_runs.parent, out=tmp_path / "book")
    pages = [built["out"] / "index.html", *sorted((built["out"] / "notebooks").glob("*.html"))]
    assert len(pages) == built["pages"] >= 7  # index + 00, 01, 02, 03, 04, 05
    assert not (tmp_path / "book.new").exists()
    if CHROMIUM is None:
        pytest.skip("no system Chromium: apt-get install -y chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        script_errors = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        shown = {}
        for path in pages:
            page.goto(path.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            assert all(images), f"{path.name}: {images.count(False)} of {len(images)} images do not decode"
            assert "Traceback" not in page.inner_text("body"), f"{path.name} shows a traceback"
            shown[path.name] = len(images)
        browser.close()
    assert not script_errors, script_errors
    assert shown["index.html"] >= 3, shown  # the study's figures
    blank = [name for name, count in shown.items() if count == 0 and name[:2] != "00"]
    assert not blank, f"pages without a figure: {blank}"  # every model notebook draws its run


def test_a_page_folds_its_parameters_under_what_this_run_changed():
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# 02"},
                    {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "base_rate: float = 0.7\n"},
                    {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]},
                     "source": 'profile = "fmnist"\nbase_rate = 0.5\nseed = 0\nrun_dir = "/x"\n'},
                    {"cell_type": "code", "metadata": {}, "source": "print(base_rate)"}]}
    folded = book.fold_parameters(nb, "02_token_pruning")
    assert [c["cell_type"] for c in folded["cells"]] == ["markdown", "markdown", "code"]
    text = folded["cells"][1]["source"]
    assert "`base_rate = 0.5`" in text and "seed" not in text.split("<details>")[0]  # 0 is the default
    assert "<details>" in text and "base_rate: float = 0.7" in text and "run_dir" in text.split("<details>")[1]
