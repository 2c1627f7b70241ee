"""The order in which samples are seen: a seeded shuffle, optionally length-grouped.

The order is a pure function of (seed, epoch), never of a global RNG, so a resumed run
replays exactly the batches an uninterrupted run would have seen (the Trainer skips the
batches already trained).

Length grouping follows the recipe: the shuffled indices are cut into mega-batches of
``per_device_batch_size x world_size x gradient_accumulation_steps`` samples (one optimizer
step), each sorted by length, longest first. Accelerate hands consecutive batches of
``per_device_batch_size`` to the ranks in turn, so the samples of one forward pass, and the
passes of one step, have similar lengths: less padding, same statistics per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class SeededSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], *, seed: int, megabatch_size: int = 0) -> None:
        self.lengths = list(lengths)
        self.seed = seed
        self.megabatch_size = megabatch_size  # 0: no length grouping
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
            out += sorted(perm[k:k + m], key=lambda i: -self.lengths[i])
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())
