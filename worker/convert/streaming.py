"""Convert a checkpoint's tensors file by file: every output tensor is computed from a few input
tensors (a :class:`Job`), written at once, and dropped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.convert.errors import ConversionError
from worker.convert.layout import Link, fuse, split
from worker.convert.tensor_io import CheckpointReader, ShardedWriter, TensorMeta

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Job:
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]


def import_job(link: Link) -> Job:
    return Job(link.native, (link.original,), lambda ts: split(link, ts[0]))


def export_job(link: Link, actual_names: dict[str, str]) -> Job:
    return Job((link.original,), tuple(actual_names[n] for n in link.native), lambda ts: [fuse(link, ts)])


def copy_job(name: str, out_name: str | None = None) -> Job:
    return Job((out_name or name,), (name,), lambda ts: ts)


def order_jobs(reader: CheckpointReader, jobs: list[Job]) -> list[Job]:
    """Jobs grouped by the weight file of their first input, in file order, so that each source
    file is opened once."""
    rank = {path: i for i, path in enumerate(reader.files)}
    return sorted(jobs, key=lambda job: rank[reader.file_of[job.inputs[0]]])  # sorted() is stable


def plan_entries(reader: CheckpointReader, jobs: list[Job]) -> list[tuple[str, TensorMeta]]:
    """The name, shape and dtype of every output, found by running the jobs on meta tensors."""
    entries = []
    for job in jobs:
        fake = [torch.empty(reader.meta[n].shape, dtype=reader.meta[n].dtype, device="meta") for n in job.inputs]
        for name, out in zip(job.outputs, job.fn(fake), strict=True):
            entries.append((name, TensorMeta(tuple(out.shape), out.dtype)))
    return entries


def _get_elsewhere(reader: CheckpointReader, name: str) -> torch.Tensor:
    with reader.open_file(reader.file_of[name]) as get:
        return get(name).clone()


def run_jobs(reader: CheckpointReader, jobs: list[Job], out_dir: Path, max_shard_bytes: int,
             progress: Progress | None = None) -> list[tuple[str, TensorMeta]]:
    """Write the outputs of ``jobs`` (already ordered) as safetensors shards in ``out_dir``."""
    entries = plan_entries(reader, jobs)
    writer = ShardedWriter(out_dir, entries, max_shard_bytes)
    try:
        _write_all(reader, jobs, writer, progress)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return entries


def _write_all(reader: CheckpointReader, jobs: list[Job], writer: ShardedWriter, progress: Progress | None) -> None:
    total, done, pos = writer.total_bytes, 0, 0
    for path in reader.files:
        with reader.open_file(path) as get:
            while pos < len(jobs) and reader.file_of[jobs[pos].inputs[0]] == path:
                job = jobs[pos]
                inputs = [get(n) if reader.file_of[n] == path else _get_elsewhere(reader, n) for n in job.inputs]
                for name, tensor in zip(job.outputs, job.fn(inputs), strict=True):
                    writer.write(name, tensor)
                    done += tensor.numel() * tensor.element_size()
                    if progress is not None:
                        progress(done, total, name)
                del inputs
                pos += 1
    if pos != len(jobs):
        raise ConversionError("internal: the conversion jobs were not ordered by weight file")
