"""vitprune: reproducible Vision Transformer pruning (DeiT, DynamicViT, block pruning)."""

__version__ = "0.1.0"
