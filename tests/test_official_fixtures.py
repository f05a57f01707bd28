"""Our ToMe and EViT against their official code's logits on the same weights and images
(tests/fixtures/official/, made by tools/official_fixtures.py from the official repositories;
the official code itself is not needed here)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from vitprune import models
from vitprune.methods import merging

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "official"
TOLERANCE = 1e-4  # max |Δ logit|


def _tool():
    spec = importlib.util.spec_from_file_location("official_fixtures", REPO / "tools" / "official_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def _model(entry: dict) -> torch.nn.Module:
    """The fixture's model: a seeded timm ViT with the recorded weights, or the release it names."""
    if "timm" in entry:
        model = _tool().tiny_model(entry["timm"])
        model.load_state_dict(entry["state_dict"])
        return model.eval()
    path = REPO / entry["release"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], \
        f"{path} is not the release the fixture was made from: run tools/official_fixtures.py again"
    return models.load_checkpoint(path)


@pytest.mark.parametrize("key", ["vit_cls", "deit_distilled", "vit_fmnist"])
def test_tome_equals_the_official_patch(key):
    entry = _fixture("tome")["models"][key]
    model = _model(entry)
    images = entry["inputs"].float()
    for r, official in entry["logits"].items():
        with torch.no_grad():
            ours = merging.apply(model, r)(images)
        diff = (ours - official).abs().max().item()
        assert diff <= TOLERANCE, f"{key} r={r}: max |Δ logit| {diff:.2e} against the official ToMe"
        assert torch.equal(ours.argmax(-1), official.argmax(-1))
