"""`python -m vitprune COMMAND ...`: the command line (see the README for the contract).

One module per command owns its parser: `run`, `table`, `baseline`, `lab`, `book`, `data`,
`measure` (also the bench command), `export`, `gpu_check`. This table only names them, and
`main()` dispatches and turns a UserError into one `error: ...` line and exit status 2. Library modules
never import `vitprune.cli`.
"""

from __future__ import annotations

import importlib
import signal
import sys

from vitprune.errors import UserError

COMMANDS = {
    "run": ("vitprune.cli.run", "main", "execute a profile's notebooks with papermill"),
    "baseline": ("vitprune.cli.baseline", "main", "train the profile's baseline (make baseline); nothing released"),
    "release": ("vitprune.cli.baseline", "release_main", "make a finished baseline run the released baseline"),
    "measure": ("vitprune.cli.measure", "main", "params, MACs and FLOPs of a model or pruned variant"),
    "bench": ("vitprune.cli.measure", "bench_main", "interleaved latency of baseline vs variant"),
    "data": ("vitprune.cli.data", "main", "cache | export | check datasets"),
    "table": ("vitprune.cli.table", "main", "assemble Table 1 from a profile's runs"),
    "export": ("vitprune.cli.export", "main", "write a model or pruned variant as ONNX, checked in onnxruntime"),
    "gpu-check": ("vitprune.cli.gpu_check", "main", "smoke profile on 1 and all GPUs + throughput: run first on GPUs"),
    "lab": ("vitprune.cli.lab", "main", "JupyterLab at the repository root (saves notebooks/ as committed)"),
    "book": ("vitprune.cli.book", "main", "the executed study as static pages (book/<profile>/)"),
}


def usage() -> str:
    lines = ["usage: python -m vitprune COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[command]
    # imported by name so that one command's dependencies (papermill, fvcore, datasets) load
    # only when that command runs
    func = getattr(importlib.import_module(module_name), func_name)
    if hasattr(signal, "SIGHUP"):  # a closed terminal stops a run like Ctrl-C does
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        return int(func(rest) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        detail = ("; finished runs and the last good run of the one in progress are untouched (its partial "
                  "files are in the run folder's .partial twin)") if command == "run" else ""
        print(f"interrupted: `{command}` stopped{detail}", file=sys.stderr)
        return 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt
