"""Methods named for a paper against their official code's logits on the same weights and images
(tests/fixtures/official/, made by tools/official_fixtures.py from the official repositories;
the official code itself is not needed here)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from vitprune import models
from vitprune.methods import evit, merging

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "official"
TOLERANCE = 1e-4  # max |Δ logit|


@functools.cache
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


# how each fixture's setting (ToMe's r, EViT's keep rate) applies our method
APPLY = {"tome": lambda model, r, entry: merging.apply(model, r),
         "evit": lambda model, rate, entry: evit.apply(model, rate, locations=entry["locations"])}


@pytest.mark.parametrize("method,key", [("tome", "vit_cls"), ("tome", "deit_distilled"), ("tome", "vit_fmnist"),
                                        ("evit", "vit_cls"), ("evit", "vit_fmnist")])
def test_equal_to_the_official_code(method, key):
    entry = _fixture(method)["models"][key]
    model = _model(entry)
    images = entry["inputs"].float()
    for setting, official in entry["logits"].items():
        with torch.no_grad():
            ours = APPLY[method](model, setting, entry)(images)
        diff = (ours - official).abs().max().item()
        assert diff <= TOLERANCE, f"{method} {key} at {setting}: max |Δ logit| {diff:.2e} against the official code"
        assert torch.equal(ours.argmax(-1), official.argmax(-1))
