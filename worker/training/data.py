"""Training data: meta file -> samples -> tensors.

Everything the dataset preview must agree with comes from the pure core: ``repeat_time``
(:mod:`backend.core.meta`), the tile grid (:mod:`backend.core.tiling`), the prompt and its
label mask (:mod:`backend.core.samples`). What is added here is pixels and the index.

The index is built once at start: every sample's tile counts (from the image headers, no
decoding) and its exact token length. That is what lets a sample that cannot be trained be
dropped *and counted* before training, instead of the reference's assert-and-retry-another
(which silently changes the data), and gives ``group_by_length`` exact lengths.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from backend.core.meta import MetaError, load_meta, locate_entry, meta_base, subsample_indices
from backend.core.samples import IGNORE_INDEX, SampleError, TokenizedSample, image_paths, tokenize_sample
from backend.core.templates import Template, TemplateError
from backend.core.tiling import IMAGE_SIZE, max_patches_per_image, plan_tiles

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: why a sample is left out, as written to the log and metrics.jsonl
DROP_REASONS = ("truncated_image", "empty_labels", "invalid", "unreadable_image")


def read_annotation(path: Path) -> list[dict]:
    import json

    with open(path, encoding="utf-8-sig") as f:
        return [json.loads(line) for line in f if line.strip()]


def to_tensor(img: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """RGB, size x size bicubic, scaled to [0, 1], ImageNet-normalised, CHW float32."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def tile_image(img: Image.Image, *, max_num: int, min_num: int = 1, use_thumbnail: bool = True,
               dynamic: bool = True, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """The recipe's crops: resize to the grid, row-major tiles, then the thumbnail."""
    plan = plan_tiles(img.width, img.height, dynamic=dynamic, min_num=min_num, max_num=max_num,
                      use_thumbnail=use_thumbnail, image_size=size)
    if plan.cols * plan.rows == 1:
        return [img.resize((size, size), Image.Resampling.BICUBIC)]
    resized = img.resize((size * plan.cols, size * plan.rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop(box) for box in plan.boxes(size)]
    if plan.thumbnail:
        tiles.append(img.resize((size, size), Image.Resampling.BICUBIC))
    return tiles


def jpeg_augment(img: Image.Image, rng: random.Random) -> Image.Image:
    """The recipe's only augmentation: a JPEG re-encode at quality 75-100 (applied to each tile,
    thumbnail included, each with a quality of its own, as the reference's per-tile transform)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(75, 100))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@dataclass
class Item:
    root: Path
    record: dict
    data_augment: bool
    max_dynamic_patch: int
    dataset: str


@dataclass
class Indexed:
    item: int
    tiles: list[int]
    length: int


class SupervisedDataset(Dataset):
    """The kept samples of every dataset of a meta file, in meta order."""

    def __init__(self, meta_path: Path, tokenizer, template: Template, *, max_seq_length: int,
                 max_dynamic_patch: int, min_dynamic_patch: int = 1, use_thumbnail: bool = True,
                 dynamic_image_size: bool = True, image_size: int = IMAGE_SIZE, tokens_per_tile: int = 256,
                 seed: int = 42) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_length = max_seq_length
        self.min_dynamic_patch = min_dynamic_patch
        self.use_thumbnail = use_thumbnail
        self.dynamic = dynamic_image_size
        self.image_size = image_size
        self.tokens_per_tile = tokens_per_tile
        self.seed = seed
        self.items: list[Item] = []
        #: samples per dataset after repeat_time, before drops
        self.lengths: dict[str, int] = {}
        self._load(Path(meta_path), max_dynamic_patch)
        self.dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.dropped_by_dataset: Counter[str] = Counter()
        self.drop_examples: list[str] = []
        self.index: list[Indexed] = []
        for i in range(len(self.items)):
            self._index_one(i)

    def _load(self, meta_path: Path, max_dynamic_patch: int) -> None:
        entries = load_meta(meta_path)
        base = meta_base(meta_path)  # the validator's rule (no base given: the meta file's folder)
        problems: list[str] = []
        located = {}
        for name, entry in entries.items():
            try:
                located[name] = locate_entry(name, entry, base)
            except MetaError as e:
                problems += e.problems
        if problems:  # every missing file at once, each named with its entry
            raise MetaError(problems)
        for name, entry in entries.items():
            root, annotation = located[name]
            records = read_annotation(annotation)
            order = subsample_indices(len(records), entry.repeat_time)
            self.lengths[name] = len(order)
            mdp = entry.max_dynamic_patch or max_dynamic_patch
            self.items += [Item(root, records[i], entry.data_augment, mdp, name) for i in order]

    def per_dataset(self) -> dict[str, dict[str, int]]:
        """What each dataset contributes to an epoch: samples after ``repeat_time``, kept after
        the drops, and the kept samples' tokens (after truncation), images and tiles."""
        out = {name: {"samples": n, "kept": 0, "dropped": self.dropped_by_dataset[name], "tokens": 0, "images": 0,
                      "tiles": 0} for name, n in self.lengths.items()}
        for x in self.index:
            row = out[self.items[x.item].dataset]
            row["kept"] += 1
            row["tokens"] += x.length
            row["images"] += len(x.tiles)
            row["tiles"] += sum(x.tiles)
        return out

    def subset(self, name: str) -> Subset:
        """The kept samples of one dataset of the meta file (per-dataset evaluation)."""
        return Subset(self, [k for k, x in enumerate(self.index) if self.items[x.item].dataset == name])

    # ---------------------------------------------------------------------------- the index
    def _drop(self, reason: str, i: int, why: str) -> None:
        self.dropped[reason] += 1
        self.dropped_by_dataset[self.items[i].dataset] += 1
        if len(self.drop_examples) < 10:
            item = self.items[i]
            self.drop_examples.append(f"{item.dataset} sample {item.record.get('id', i)!r}: {why}")

    def _tile_counts(self, item: Item) -> list[int]:
        paths = image_paths(item.record)
        per_image = max_patches_per_image(item.max_dynamic_patch, len(paths))
        counts = []
        for rel in paths:
            with Image.open(item.root / rel) as im:  # reads the header only
                w, h = im.size
            plan = plan_tiles(w, h, dynamic=self.dynamic, min_num=self.min_dynamic_patch, max_num=per_image,
                              use_thumbnail=self.use_thumbnail, image_size=self.image_size)
            counts.append(plan.num_tiles)
        return counts

    def _index_one(self, i: int) -> None:
        item = self.items[i]
        try:
            tiles = self._tile_counts(item)
        except (OSError, ValueError) as e:
            return self._drop("unreadable_image", i, f"{type(e).__name__}: {e}")
        try:
            sample = tokenize_sample(item.record, self.template, self.tokenizer, tiles, self.tokens_per_tile)
        except (SampleError, TemplateError, KeyError, TypeError) as e:
            return self._drop("invalid", i, f"{type(e).__name__}: {e}")
        reason = self._untrainable(sample)
        if reason:
            return self._drop(reason, i, f"{sample.total_tokens} tokens, max_seq_length {self.max_seq_length}")
        self.index.append(Indexed(i, tiles, min(sample.total_tokens, self.max_seq_length)))

    def _untrainable(self, s: TokenizedSample) -> str | None:
        """Why a sample cannot be trained after truncation to max_seq_length, or None."""
        n = self.max_seq_length
        if any(end > n for _, end in s.image_spans):
            return "truncated_image"
        if all(x == IGNORE_INDEX for x in s.labels[:n]):
            return "empty_labels"
        return None

    @property
    def modality_lengths(self) -> list[int]:
        return [x.length for x in self.index]

    def __len__(self) -> int:
        return len(self.index)

    # ---------------------------------------------------------------------------- a sample
    def __getitem__(self, idx: int) -> dict:
        entry = self.index[idx]
        item = self.items[entry.item]
        # Per-sample RNG: the JPEG quality is the same whichever rank or worker loads it, and on resume.
        rng = random.Random(self.seed * 1_000_003 + entry.item)
        per_image = max_patches_per_image(item.max_dynamic_patch, len(entry.tiles))
        tiles: list[Image.Image] = []
        for rel in image_paths(item.record):
            with Image.open(item.root / rel) as im:
                img = im.convert("RGB")
            crops = tile_image(img, max_num=per_image, min_num=self.min_dynamic_patch,
                               use_thumbnail=self.use_thumbnail, dynamic=self.dynamic, size=self.image_size)
            tiles += [jpeg_augment(t, rng) for t in crops] if item.data_augment else crops
        if len(tiles) != sum(entry.tiles):
            raise RuntimeError(f"{item.dataset} sample {item.record.get('id')!r}: the image changed since indexing")
        sample = tokenize_sample(item.record, self.template, self.tokenizer, entry.tiles, self.tokens_per_tile)
        n = self.max_seq_length
        pixel_values = (torch.stack([to_tensor(t, self.image_size) for t in tiles]) if tiles
                        else torch.zeros(0, 3, self.image_size, self.image_size))
        return {"input_ids": torch.tensor(sample.input_ids[:n], dtype=torch.long),
                "labels": torch.tensor(sample.labels[:n], dtype=torch.long), "pixel_values": pixel_values}


class Collator:
    """Right-pad ids (with the pad id) and labels (with -100); concatenate every tile of the
    batch into one ``pixel_values`` with ``image_flags``.

    A batch without any image gets one white dummy tile with flag 0: every rank then runs the
    vision tower once per step, so DeepSpeed's collectives (ZeRO-3 gathers, gradient
    reduction over the vision parameters) line up across ranks. Unlike the reference, samples
    of a batch that has real images carry no dummy tile: it would only cost compute.
    """

    def __init__(self, pad_token_id: int, image_size: int = IMAGE_SIZE) -> None:
        self.pad = pad_token_id
        self.image_size = image_size

    def __call__(self, batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = b["input_ids"]
            labels[i, :k] = b["labels"]
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, **self.tiles(batch)}

    def tiles(self, batch: list[dict]) -> dict:
        """Every tile of the batch with its flag, or the one white dummy tile (flag 0)."""
        tiles = [b["pixel_values"] for b in batch if len(b["pixel_values"])]
        if tiles:
            pixel_values = torch.cat(tiles)
            flags = torch.ones(len(pixel_values), dtype=torch.long)
        else:
            white = Image.new("RGB", (self.image_size, self.image_size), (255, 255, 255))
            pixel_values = to_tensor(white, self.image_size).unsqueeze(0)
            flags = torch.zeros(1, dtype=torch.long)
        return {"pixel_values": pixel_values, "image_flags": flags}
