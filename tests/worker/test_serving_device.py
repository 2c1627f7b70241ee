"""The model server on a GPU node: the leased GPU ("cuda:N") serves in bf16, and unloading gives
the memory back before the lease (tests/gpu/test_serving_gpu.py measures both on a real GPU)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from types import SimpleNamespace

import torch

from worker import serving
from worker.evaluation.generation import model_dtype, release_device_memory


def test_a_leased_gpu_cuda_n_serves_in_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert model_dtype("cuda:1") == model_dtype("cuda:0") == model_dtype("cuda") == torch.bfloat16
    assert model_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # pre-Ampere: fp32
    assert model_dtype("cuda:1") == torch.float32


def test_unloading_empties_the_cache_of_the_leased_gpu_before_giving_the_lease_back(monkeypatch):
    events = []

    @contextlib.contextmanager
    def on_device(device):
        events.append(("device", str(device)))
        yield

    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("empty_cache",)))
    monkeypatch.setattr(serving, "session_scope", contextlib.nullcontext)
    monkeypatch.setattr(serving.scheduling, "release_holder", lambda s, holder: events.append(("release", holder)))
    server = SimpleNamespace(device="cuda:1", last_used=0.0, settings=SimpleNamespace(serve_idle_seconds=0),
                             models=OrderedDict(a=object()), holder="serve:w1",
                             scheduler=SimpleNamespace(wake=lambda: events.append(("wake",))))
    serving.ModelServer._unload_if_idle(server)
    assert not server.models and server.device is None
    assert events == [("device", "cuda:1"), ("empty_cache",), ("release", "serve:w1"), ("wake",)]

    events.clear()
    release_device_memory("cpu")  # nothing to empty on the CPU
    assert events == []
