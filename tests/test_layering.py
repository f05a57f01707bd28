"""Import direction inside vitprune: no cycle among module-level imports, no library module
importing the command line, and no function-local import of a vitprune module without a
stated reason (a comment on its line)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vitprune"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        # `from vitprune import models` imports the module vitprune.models
        return [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    return []


def _top_level_edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        targets = {t for node in tree.body for t in _imported(node)}
        edges[name] = {t for t in targets if t in mods and t != name and t != "vitprune"}
    return edges


def test_no_import_cycle_among_module_level_imports():
    edges = _top_level_edges(_modules())
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name, path):
        state[name] = 1
        for dep in sorted(edges[name]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_library_modules_never_import_the_command_line():
    for name, path in _modules().items():
        if name.startswith("vitprune.cli") or name == "vitprune.__main__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # module level or inside functions
            cli = [t for t in _imported(node) if t == "vitprune.cli" or t.startswith("vitprune.cli.")]
            assert not cli, f"{path.name}:{node.lineno} imports {cli}"


def test_function_local_vitprune_imports_state_a_reason():
    unexplained = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if id(node) in top or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if any(t == "vitprune" or t.startswith("vitprune.") for t in _imported(node)):
                if "#" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "function-local imports without a reason:\n" + "\n".join(unexplained)


# docs/DESIGN.md's layer table: a module imports a lower layer or its own package
LAYERS = [
    ("vitprune", "vitprune.errors", "vitprune.hub", "vitprune.torchutil", "vitprune.param_rules", "vitprune.progress"),
    ("vitprune.data", "vitprune.measure", "vitprune.measure.counts", "vitprune.measure.latency"),
    ("vitprune.methods",),
    ("vitprune.models",),
    ("vitprune.train", "vitprune.deploy"),
    ("vitprune.study",),
    ("vitprune.api",),
    ("vitprune.cli",),
    ("vitprune.__main__",),
]


def _layer(name: str) -> int:
    """The layer of a module: the most specific entry of LAYERS naming it or a package holding it."""
    best = None
    for rank, entries in enumerate(LAYERS):
        for entry in entries:
            if (name == entry or name.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (rank, entry)
    assert best is not None, f"{name} is in no layer of docs/DESIGN.md"
    return best[0]


def _package(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else "vitprune"


def test_imports_follow_the_layer_rule():
    mods = _modules()
    wrong = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node):
                if target not in mods or target in (name, "vitprune"):
                    continue
                low, high = _layer(target), _layer(name)
                if low > high or (low == high and _package(target) != _package(name)):
                    wrong.append(f"{name} (layer {high}) imports {target} (layer {low})")
    assert not wrong, "imports against docs/DESIGN.md's layer rule:\n" + "\n".join(sorted(set(wrong)))


def test_the_package_is_places_not_prefixes():
    top_level = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top_level) <= 7, f"vitprune/ holds {len(top_level)} modules beside its sub-packages: {top_level}"


def test_no_module_over_500_lines():
    """A module a newcomer reads in one sitting: past 500 lines it is two concerns (split by one)."""
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


def test_the_pipeline_and_its_run_processes_start_without_torch():
    """`python -m vitprune.study.execution` is started once per run: importing torch there (~3 s)
    would be paid by every run before its kernel imports it anyway."""
    import subprocess
    import sys

    code = ("import sys, vitprune.study.execution, vitprune.study.pipeline, vitprune.cli.run; "
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
