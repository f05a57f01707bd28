"""torchutil: one unwrap, one safe checkpoint reader, one hub probe, one logits helper."""

import argparse
import socket

import pytest
import torch
import torch.nn as nn

from vitprune import hub, torchutil
from vitprune.errors import UserError


class _Wrapper(nn.Module):  # what DDP / accelerate look like from outside: the model under .module
    def __init__(self, module):
        super().__init__()
        self.module = module


class _Payload:  # a pickled class a weights-only load must refuse
    pass


def test_unwrap_strips_module_wrappers_and_compile():
    bare = nn.Linear(2, 2)
    assert torchutil.unwrap(bare) is bare
    assert torchutil.unwrap(_Wrapper(_Wrapper(bare))) is bare
    assert torchutil.unwrap(nn.DataParallel(bare)) is bare
    compiled = torch.compile(bare)  # wrapping only; nothing is compiled until it is called
    assert torchutil.unwrap(compiled) is bare
    assert torchutil.unwrap(_Wrapper(compiled)) is bare


def test_torch_load_reads_weights_and_official_namespace(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(arch="deit_tiny")}, path)
    obj = torchutil.torch_load(path)
    assert torch.equal(obj["model"]["w"], torch.ones(2)) and obj["args"].arch == "deit_tiny"


def test_torch_load_refuses_pickled_objects_naming_file_and_class(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "extra": _Payload()}, path)
    with pytest.raises(UserError) as info:
        torchutil.torch_load(path)
    msg = str(info.value)
    assert str(path) in msg and "_Payload" in msg and "weights_only=True" in msg
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=f"cannot read checkpoint {junk}"):
        torchutil.torch_load(junk)
    with pytest.raises(UserError, match="not found"):
        torchutil.torch_load(tmp_path / "missing.pt")


def test_hub_reachable_respects_offline_and_proxy(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert hub.hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # "0" is not offline mode
    assert hub.hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cache-only: let the library look in its cache
    assert hub.hub_reachable() is True
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.hub_reachable() is False
    assert hub.hub_reachable(offline_env=("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")) is True
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub.hub_reachable() is True


def test_logits_takes_the_first_of_a_tuple():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert torchutil.logits(a) is a
    assert torchutil.logits((a, b)) is a and torchutil.logits([b, a]) is b
