"""The order in which samples are seen: a seeded shuffle, optionally length-grouped.

The order is a pure function of (seed, epoch), never of a global RNG, so a resumed run
replays exactly the batches an uninterrupted run would have seen (the Trainer skips the
batches already trained).

Length grouping follows the recipe (InternVL's ``LengthGroupedSampler``, after LLaVA): the
shuffled indices are cut into mega-batches of ``per_device_batch_size x world_size x
gradient_accumulation_steps`` samples (one optimizer step), each sorted longest first and then
dealt into ``world_size x gradient_accumulation_steps`` micro-batches of
``per_device_batch_size`` whose total lengths are balanced: each sample, longest first, goes
to the micro-batch with the least tokens so far that is not yet full. Accelerate hands
consecutive micro-batches to the ranks in turn, so no rank is always given the longest
samples (a straggler every step), while the samples of one step still have similar lengths.
A last, partial mega-batch is dealt round-robin, as the reference does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def balanced_chunks(indices: list[int], lengths: Sequence[int], chunks: int) -> list[list[int]]:
    """``indices`` (longest first) split into ``chunks`` lists of equal size with balanced total
    lengths; round-robin when they do not divide evenly."""
    if len(indices) % chunks:
        return [indices[i::chunks] for i in range(chunks)]
    size = len(indices) // chunks
    out: list[list[int]] = [[] for _ in range(chunks)]
    totals = [0.0] * chunks
    for i in indices:
        k = totals.index(min(totals))
        out[k].append(i)
        totals[k] += lengths[i]
        if len(out[k]) == size:
            totals[k] = float("inf")  # full: never the lightest again
    return out


class SeededSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], *, seed: int, megabatch_size: int = 0, chunks: int = 1) -> None:
        """``megabatch_size`` 0: no length grouping; ``chunks``: micro-batches per mega-batch
        (``world_size x gradient_accumulation_steps``)."""
        self.lengths = np.asarray(lengths, dtype=np.int64)  # one array, not a Python int per sample
        self.seed = seed
        self.megabatch_size = megabatch_size
        self.chunks = max(chunks, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.megabatch_size <= 1:
            return perm
        m = self.megabatch_size
        out: list[int] = []
        for k in range(0, len(perm), m):
            mega = sorted(perm[k:k + m], key=lambda i: -self.lengths[i])
            out += [i for chunk in balanced_chunks(mega, self.lengths, self.chunks) for i in chunk]
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())
