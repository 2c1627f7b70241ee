"""Multimodal packing: several samples in one sequence of ``max_seq_length`` tokens.

A pack is a row of the batch holding whole samples one after the other (a sample is never
split), under two budgets: ``max_seq_length`` tokens and ``max_tiles`` image tiles (the ViT
runs on every tile of the pack, so the tile budget bounds its memory). What keeps the samples
of a pack independent:

- **positions restart at 0 for every sample** (RoPE sees what it sees unpacked);
- **attention never crosses a sample boundary.** The forward pass gets no 2D attention mask,
  only the position ids. transformers (5.24, ``masking_utils.find_packed_sequence_indices``)
  then cuts the causal mask into one block per run of increasing positions for SDPA and
  eager attention (a block-sparse mask for flex_attention); for the varlen kernels
  (flash-attention 2, torch's ``varlen``) the trainer flattens the batch to one row and passes
  the cumulative sequence lengths built here, so the kernel runs without a per-layer device sync
  (transformers only infers them from positions at batch size 1);
- **the first label of every sample is ignored.** Unpacked, a sample's first token is never a
  target (nothing precedes it); packed, the last token of the previous sample would predict
  it. The first token is always prompt (BOS or system turn), already -100 for every template,
  so this changes no label: it is asserted, not assumed.

The plan (which samples share a pack) is computed once at start from the dataset index
(exact token and tile counts, no decoding), as a pure function of the seed: the number of
packs, hence of steps per epoch, is known before training, and a resumed run rebuilds the same
plan. The sampler then shuffles the packs per epoch like it shuffles samples.

Packing itself is best fit decreasing within windows of the seeded shuffle: each sample, in
decreasing length, goes into the open pack whose token room fits it most tightly (tiles
permitting). Windows keep the shuffle's mixing (a pack holds samples of one window) and the
cost linear in the dataset size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from backend.core.samples import IGNORE_INDEX

#: samples per packing window of the shuffled order
WINDOW = 2048
#: open packs kept per window: the fullest ones are closed first when there are more
MAX_OPEN = 512


@dataclass(frozen=True)
class PackPlan:
    packs: list[tuple[int, ...]]
    max_seq_length: int
    max_tiles: int
    tokens: int
    #: samples whose tiles alone exceed the budget (each got a pack of its own)
    over_tile_budget: int = 0

    def __len__(self) -> int:
        return len(self.packs)

    @property
    def samples(self) -> int:
        return sum(len(p) for p in self.packs)

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots, the slots being every pack filled to max_seq_length."""
        return self.tokens / max(len(self.packs) * self.max_seq_length, 1)


def plan_packs(lengths: Sequence[int], tiles: Sequence[int], *, max_seq_length: int, max_tiles: int,
               seed: int, window: int = WINDOW) -> PackPlan:
    """Which samples share a pack: a pure function of the counts, the budgets and the seed."""
    n = len(lengths)
    if any(length > max_seq_length for length in lengths):
        raise ValueError(f"a sample is longer than max_seq_length {max_seq_length}; truncate before packing")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    packs: list[tuple[int, ...]] = []
    over = 0
    for start in range(0, n, window):
        chunk = sorted(order[start:start + window], key=lambda i: (-lengths[i], i))
        members: list[list[int]] = []
        room = np.zeros(0, dtype=np.int64)
        tile_room = np.zeros(0, dtype=np.int64)
        for i in chunk:
            if tiles[i] > max_tiles:
                packs.append((i,))
                over += 1
                continue
            fits = (room >= lengths[i]) & (tile_room >= tiles[i])
            if fits.any():
                k = int(np.argmin(np.where(fits, room, np.iinfo(np.int64).max)))
                members[k].append(i)
                room[k] -= lengths[i]
                tile_room[k] -= tiles[i]
                continue
            if len(members) == MAX_OPEN:  # close the fullest open pack
                k = int(np.argmin(room))
                packs.append(tuple(members.pop(k)))
                room, tile_room = np.delete(room, k), np.delete(tile_room, k)
            members.append([i])
            room = np.append(room, max_seq_length - lengths[i])
            tile_room = np.append(tile_room, max_tiles - tiles[i])
        packs += [tuple(m) for m in members]
    return PackPlan(packs, max_seq_length, max_tiles, int(sum(lengths)), over)


class PackedDataset(Dataset):
    """The packs of a plan over a sample dataset; item ``i`` is pack ``i``, samples concatenated."""

    def __init__(self, samples: Dataset, plan: PackPlan) -> None:
        self.samples = samples
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def pack_lengths(self) -> list[int]:
        lengths = self.samples.modality_lengths
        return [sum(lengths[i] for i in p) for p in self.plan.packs]

    def __getitem__(self, idx: int) -> dict:
        return pack_samples([self.samples[i] for i in self.plan.packs[idx]])


def pack_samples(items: list[dict]) -> dict:
    """Concatenate samples into one row: ids, labels (first of each ignored), restarting positions."""
    for k, it in enumerate(items):
        if int(it["labels"][0]) != IGNORE_INDEX:
            raise ValueError(f"sample {k} of a pack has a target on its first token; it cannot be packed")
    lengths = [len(it["input_ids"]) for it in items]
    return {
        "input_ids": torch.cat([it["input_ids"] for it in items]),
        "labels": torch.cat([it["labels"] for it in items]),
        "position_ids": torch.cat([torch.arange(n) for n in lengths]),
        "pixel_values": torch.cat([it["pixel_values"] for it in items]),
        "sample_lengths": torch.tensor(lengths, dtype=torch.long),
    }


class PackCollator:
    """Stack packs into rows padded to the longest; the padding is a segment of its own.

    Besides the usual keys it returns ``position_ids``; ``sample_index`` (for each token the
    index of its sample within the micro-batch, -1 on padding: what a per-sample loss
    reduction needs); ``cu_seqlens`` / ``max_seqlen`` over the batch flattened to one row
    (every segment, padding included) for the flash-attention varlen kernel; and
    ``attention_mask`` marking real tokens, for the statistics only (the model gets none).
    """

    def __init__(self, pad_token_id: int, image_collator) -> None:
        self.pad = pad_token_id
        self.images = image_collator  # the unpacked Collator: its tiles, flags and dummy tile

    def __call__(self, batch: list[dict]) -> dict:
        # Plain samples (the evaluation split is not packed) are packs of one.
        batch = [b if "sample_lengths" in b else pack_samples([b]) for b in batch]
        n = max(len(b["input_ids"]) for b in batch)
        rows = len(batch)
        ids = torch.full((rows, n), self.pad, dtype=torch.long)
        labels = torch.full((rows, n), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((rows, n), dtype=torch.long)
        sample_index = torch.full((rows, n), -1, dtype=torch.long)
        segments: list[int] = []
        first = 0
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[r, :k], labels[r, :k], positions[r, :k] = b["input_ids"], b["labels"], b["position_ids"]
            positions[r, k:] = torch.arange(n - k)
            lens = b["sample_lengths"]
            sample_index[r, :k] = torch.repeat_interleave(torch.arange(first, first + len(lens)), lens)
            first += len(lens)
            segments += lens.tolist() + ([n - k] if n > k else [])
        out = self.images.tiles(batch)
        cu = torch.tensor([0, *np.cumsum(segments).tolist()], dtype=torch.int32)
        out.update(input_ids=ids, labels=labels, attention_mask=(sample_index >= 0).long(), position_ids=positions,
                   sample_index=sample_index, cu_seqlens=cu, max_seqlen=int(max(segments)))
        return out


def per_sample_token_counts(labels: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """Targets per sample of a packed micro-batch (after the shift: a label counts when it is
    not ignored), indexed like ``sample_index``."""
    targets = (labels != IGNORE_INDEX) & (sample_index >= 0)
    count = int(sample_index.max()) + 1 if sample_index.numel() else 0
    return torch.bincount(sample_index[targets], minlength=count)


@dataclass
class PackInputs:
    """The packing keys of a micro-batch, taken out of the Trainer's inputs."""

    position_ids: torch.Tensor
    sample_index: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    @property
    def samples(self) -> int:
        return int(self.sample_index.max()) + 1 if self.sample_index.numel() else 0


def pop_pack_inputs(inputs: dict) -> PackInputs | None:
    if "position_ids" not in inputs:
        return None
    return PackInputs(inputs.pop("position_ids"), inputs.pop("sample_index"), inputs.pop("cu_seqlens"),
                      int(inputs.pop("max_seqlen")))


def forward_inputs(pack: PackInputs | None, embeds: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                   one_row: bool) -> dict:
    """What the language model is called with: the padding mask unpacked; packed, no mask and
    restarting positions (SDPA/eager: a block-diagonal causal mask; flex_attention: a block-sparse
    one), or for the varlen kernels (flash-attention 2, torch's ``varlen``) the batch as one row
    with its cumulative sequence lengths."""
    if pack is None:
        return {"inputs_embeds": embeds, "labels": labels, "attention_mask": attention_mask}
    # No cache: transformers builds the block-diagonal mask from the positions only without one.
    if not one_row:
        return {"inputs_embeds": embeds, "labels": labels, "attention_mask": None, "position_ids": pack.position_ids,
                "use_cache": False}
    cu = pack.cu_seqlens.to(embeds.device, torch.int32)
    return {"inputs_embeds": embeds.reshape(1, -1, embeds.shape[-1]), "labels": labels.reshape(1, -1),
            "attention_mask": None, "position_ids": pack.position_ids.reshape(1, -1), "use_cache": False,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": pack.max_seqlen, "max_length_k": pack.max_seqlen}
