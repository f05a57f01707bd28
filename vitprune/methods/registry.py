"""Every pruning method by name: the one list the rest of vitprune loops over.

A method is one module ending in `METHOD = Method(...)` (see `method.Method`) plus one entry in
`BUILT_IN` below; code elsewhere asks the registry (`get`, `token_methods`, `applied`,
`method_state`, `restore`) instead of importing the module. `register` also takes a method
defined anywhere else (a user's, or a test's) at run time, and `load_plugins` the `METHOD` of a
module or `.py` file a notebook's `plugins` parameter names.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from torch import nn

from vitprune import param_rules
from vitprune.errors import UserError
from vitprune.methods import block_pruning, dynamicvit, evit, merging, training_free
from vitprune.methods.method import TOKEN, WIDTH, Method

BUILT_IN = (block_pruning, dynamicvit, training_free, merging, evit)  # width methods first: the order they apply in
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` (its name must be new, or name this same declaration; a flag it shares with
    another method must be declared identically; its parameter rules join `param_rules`)."""
    if METHODS.get(method.name) is method:
        return method
    if method.name in METHODS:
        raise UserError(f"a method named {method.name!r} is registered already")
    if method.kind not in (TOKEN, WIDTH):
        raise UserError(f"method {method.name!r}: kind must be {TOKEN!r} or {WIDTH!r}, got {method.kind!r}")
    if method.kind == TOKEN and (method.tokens_per_block is None or method.kept_token_masks is None):
        raise UserError(f"token method {method.name!r} needs tokens_per_block and kept_token_masks")
    known = {f.flag: f for m in METHODS.values() for f in m.flags}
    for flag in method.flags:
        if flag.flag in known and known[flag.flag] != flag:
            raise UserError(f"method {method.name!r} declares {flag.flag} unlike the method already using it")
    param_rules.declare(method.parameters)
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added by `register` (its parameter rules stay)."""
    METHODS.pop(name, None)


for _module in BUILT_IN:
    register(_module.METHOD)


def load_plugins(plugins: Sequence[str], root: str | Path | None = None) -> list[Method]:
    """Register the method of each plugin: a module name (`my_package.my_method`) or a `.py` file
    (relative to `root`, else the working folder), which ends in `METHOD = Method(...)` as the
    built-in methods do. Loading one again registers nothing new. Returns the plugins' methods."""
    found = []
    for plugin in plugins:
        path = Path(root or ".") / plugin if str(plugin).endswith(".py") else None
        try:
            if path is None:
                module = importlib.import_module(plugin)
            else:
                name = "vitprune_plugin_" + path.stem
                module = sys.modules.get(name)
                if module is None or Path(module.__file__).resolve() != path.resolve():
                    spec = importlib.util.spec_from_file_location(name, path)
                    if spec is None or not path.is_file():
                        raise FileNotFoundError(path)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    sys.modules[name] = module
        except (ImportError, FileNotFoundError, SyntaxError) as exc:
            raise UserError(f"plugin {plugin!r} cannot be imported ({exc}); give a module name on the Python path "
                            "or a .py file relative to the repository") from exc
        method = getattr(module, "METHOD", None)
        if not isinstance(method, Method):
            raise UserError(f"plugin {plugin!r} defines no METHOD = vitprune.methods.method.Method(...)")
        found.append(register(method))
    return found


@contextmanager
def plugged_in(plugins: Sequence[str], root: str | Path | None = None) -> Iterator[list[Method]]:
    """`load_plugins` for the duration of a `with` block: the methods it registered anew, and their
    parameter rules, are gone after it (a process that only checks parameters keeps no plugin's)."""
    before, rules = set(METHODS), dict(param_rules.RULES)
    try:
        yield load_plugins(plugins, root)
    finally:
        for name in set(METHODS) - before:
            unregister(name)
        param_rules.RULES.clear()
        param_rules.RULES.update(rules)


def get(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"no pruning method named {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def token_methods() -> list[Method]:
    return [m for m in METHODS.values() if m.kind == TOKEN]


def _token_method(name: Any, trains: bool = False, training_free: bool = False) -> bool:
    found = METHODS.get(name) if isinstance(name, str) else None
    return found is not None and found.kind == TOKEN and (found.trains or not trains) and (
        found.result_without_training or not training_free)


# the notebooks' method parameters: 02 fine-tunes `method` (its MACs matched to `match_macs_of`'s),
# 04 evaluates each of `comparators` as applied
param_rules.declare({
    "method": param_rules.Rule(lambda name: _token_method(name, trains=True),
                               "a registered token method that fine-tunes, like dynamicvit, evit or merging "
                               "(vitprune.list_methods(); a plugin's once `plugins` names it)"),
    "match_macs_of": param_rules.Rule(lambda name: name == "" or _token_method(name),
                                      "empty, or a registered token method whose MACs at base_rate this run "
                                      "matches, like dynamicvit"),
    "comparators": param_rules.Rule(
        lambda names: isinstance(names, (list, tuple)) and all(_token_method(n, training_free=True) for n in names),
        "a list of registered token methods that are results without training, like training_free and merging "
        "(vitprune.list_methods(); a plugin's once `plugins` names it)"),
})


def applied(model: nn.Module) -> list[Method]:
    """The methods applied to `model`, width methods first."""
    return [m for m in METHODS.values() if m.attached(model)]


def attached(model: nn.Module) -> Method | None:
    """The token method applied to `model`, or None (token methods exclude one another)."""
    return next((m for m in applied(model) if m.kind == TOKEN), None)


def method_state(model: nn.Module) -> dict[str, Any]:
    """Every method's checkpoint state of `model` (plain values, None where not applied)."""
    return {key: value for m in METHODS.values() for key, value in m.state(model).items()}


def restore(model: nn.Module, saved: dict[str, Any]) -> nn.Module:
    """Re-apply, in registration order, every method whose state `saved` (a checkpoint) holds."""
    for method in METHODS.values():
        model = method.restore(model, saved) or model
    return model


def is_pruned(model: nn.Module) -> bool:
    """True if any method is applied to `model`."""
    return bool(applied(model))


def apply(model: nn.Module, name: str, **options: Any) -> nn.Module:
    """Apply the method called `name` to `model` in place with its options; returns the model."""
    return get(name).apply(model, **options) or model


def apply_all(model: nn.Module, chosen: dict[str, dict[str, Any]]) -> nn.Module:
    """Apply several methods ({name: options}, at most one token method) in registration order:
    width methods first, so the token method sees the blocks as they will run."""
    tokens = [name for name in chosen if get(name).kind == TOKEN]
    if len(tokens) > 1:
        raise UserError(f"{' and '.join(tokens)} both reduce tokens; use one token method at a time")
    for name in [n for n in METHODS if n in chosen]:
        model = apply(model, name, **chosen[name])
    return model
