"""Progress bars that suit where the output goes: ipywidgets bars in JupyterLab (tqdm.auto picks
them in a kernel), plain text in a terminal and in a notebook the pipeline executes (its kernels
run with KERNEL_ENV, so an executed notebook holds text lines, not widget state that reads as
nothing outside a live lab)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterable

KERNEL_ENV = {"VITPRUNE_PROGRESS": "text", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
"""What the pipeline's kernels run with: text bars, and none of HF datasets' own (they would be
widgets too, now that ipywidgets is installed)."""


def bar(iterable: Iterable | None = None, **options: Any):
    """A tqdm bar over `iterable` (tqdm's own keyword options)."""
    if os.environ.get("VITPRUNE_PROGRESS") == "text":
        from tqdm.std import tqdm

        options["leave"] = True  # a cleared text bar leaves an empty stderr box in the executed notebook
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, **options)


@contextmanager
def kernel_env():
    """KERNEL_ENV in os.environ while the pipeline starts a kernel (it inherits them), then as before."""
    saved = {name: os.environ.get(name) for name in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
