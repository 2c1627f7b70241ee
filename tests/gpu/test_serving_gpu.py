"""The model server's GPU path: a model loaded for chats on a leased GPU ("cuda:N") is bf16, and
unloading gives its memory back to the GPU (the allocator's cache emptied), so the next job on
the GPU gets it."""

from __future__ import annotations

import gc

import torch
from conftest import CUDA, DEVICE, gpu_only

from worker.evaluation.generation import Generator, collate_left, release_device_memory


def test_served_model_is_bf16_on_cuda_n_and_generates(demo):
    device = f"cuda:{DEVICE.index}" if CUDA else "cpu"
    gen = Generator(demo, device=device)
    assert gen.model.dtype == (torch.bfloat16 if CUDA else torch.float32)
    assert next(gen.model.parameters()).device == torch.device(device)
    batch = {k: v.to(device) for k, v in collate_left([gen.prompt([{"from": "human", "value": "Hello"}], [])],
                                                      gen.pad_id).items()}
    with torch.inference_mode():
        out = gen.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_unloading_gives_the_memory_back(demo):
    gpu_only("GPU memory")
    release_device_memory(f"cuda:{DEVICE.index}")
    base = torch.cuda.memory_reserved(DEVICE)
    gen = Generator(demo, device=f"cuda:{DEVICE.index}")
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE)  # what a generation would have cached
    del x
    loaded = torch.cuda.memory_reserved(DEVICE)
    assert loaded > base
    del gen
    gc.collect()
    assert torch.cuda.memory_reserved(DEVICE) > base  # freed tensors stay in this process' cache...
    release_device_memory(f"cuda:{DEVICE.index}")
    assert torch.cuda.memory_reserved(DEVICE) <= base  # ...until the server empties it on unload
    print(f"reserved MiB: before {base / 2**20:.0f}, loaded {loaded / 2**20:.0f}, after unload "
          f"{torch.cuda.memory_reserved(DEVICE) / 2**20:.0f}")
