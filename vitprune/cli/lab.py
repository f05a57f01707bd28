"""`python -m vitprune lab` (`make lab`): JupyterLab for this repository.

- rooted at the repository (README, params/, runs/, figures/ open from the file browser), showing
  notebooks/ first;
- kernels on IPC sockets in the Jupyter runtime folder, as the pipeline's (no TCP ports, no
  "without encryption" warning, no socket files in the repository);
- as root (a container) with `--allow-root`;
- a notebook's kernel starts without a "Select Kernel" dialog, no news pop-up;
- a pre-save hook that writes notebooks/ as committed (outputs, execution counts and kernel
  metadata stripped), so autosave and Ctrl-S never dirty the repository. Executed copies come
  from the pipeline (runs/) and the book (`make book`).
A lab run of a notebook writes under runs/<profile>/lab/ (see the notebooks' first cell).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vitprune.study import config

COMMITTED = "notebooks/"  # API paths (relative to the server root) of the committed notebooks
# JupyterLab settings for this server (overrides.json in its app settings folder): a notebook
# opened starts its python3 kernel without a "Select Kernel" dialog, and no news pop-up asks to
# reach the internet
SETTINGS = {"@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True},
            "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


def strip_before_save(model: dict[str, Any], path: str, **kwargs: Any) -> None:
    """jupyter_server's `ContentsManager.pre_save_hook`: a notebook under notebooks/ is saved as
    committed; any other file as the lab has it."""
    if model.get("type") == "notebook" and path.lstrip("/").startswith(COMMITTED):
        model["content"] = config.stripped_notebook(model["content"])


def lab_command(port: int = 8888, token: str | None = None, open_browser: bool = True) -> list[str]:
    """The `jupyter lab` command line with this repository's settings."""
    from jupyter_core.paths import jupyter_runtime_dir

    runtime = Path(jupyter_runtime_dir())
    settings = runtime / "vitprune-lab-settings"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps(SETTINGS, indent=1))
    command = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={config.project_root()}",
               "--LabApp.default_url=/lab/tree/notebooks", f"--ServerApp.port={port}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.open_browser={open_browser}",
               f"--LabApp.app_settings_dir={settings}",
               f"--ContentsManager.pre_save_hook={__name__}.strip_before_save",
               "--KernelManager.transport=ipc", f"--KernelManager.ip={runtime / f'vitprune-lab-{os.getpid()}'}"]
    if token is not None:
        command.append(f"--IdentityProvider.token={token}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitprune lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--token", default=None, help="the server's token (default: a random one, printed)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser (a container, CI)")
    args = parser.parse_args(argv)
    command = lab_command(args.port, args.token, not args.no_browser)
    os.execv(command[0], command)  # this process becomes the server: Ctrl-C and kill reach JupyterLab itself
