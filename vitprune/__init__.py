"""vitprune: reproducible Vision Transformer pruning (DeiT, DynamicViT, block pruning, their
combination) over timm.

The public API (`vitprune.api`, loaded on first use so the torch-free commands stay so):
`vitprune.list_methods()` (as timm.list_models), `vitprune.apply(model, method, **options)`, `vitprune.count(model)`,
`vitprune.benchmark(model, pruned)`, `vitprune.export_onnx(model, path)`.
"""

__version__ = "0.1.0"
API = ("list_methods", "apply", "count", "benchmark", "export_onnx")


def __getattr__(name: str):
    if name in API:
        import importlib

        return getattr(importlib.import_module("vitprune.api"), name)
    raise AttributeError(f"module 'vitprune' has no attribute {name!r}")
