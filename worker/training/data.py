"""Training data: meta file -> samples -> tensors, using the pure core for everything that
the dataset preview must agree with (tiling, templates, label spans)."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from backend.core.samples import IGNORE_INDEX, SampleError, image_paths, tokenize_sample
from backend.core.spec import DatasetEntry
from backend.core.templates import Template
from backend.core.tiling import IMAGE_SIZE, max_patches_per_image, plan_tiles

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load_meta(meta_path: Path) -> dict[str, DatasetEntry]:
    raw = json.loads(meta_path.read_text())
    return {name: DatasetEntry.model_validate(entry) for name, entry in raw.items()}


def read_records(entry: DatasetEntry, seed: int) -> list[dict]:
    """The annotation lines of one dataset with ``repeat_time`` applied."""
    with open(entry.annotation, encoding="utf-8-sig") as f:
        records = [json.loads(line) for line in f if line.strip()]
    rt = entry.repeat_time
    if rt < 1:
        # Subsample a seeded random subset, as the July-2024 reference did.
        random.Random(seed).shuffle(records)
        records = records[: int(len(records) * rt)]
    elif rt > 1:
        if rt != int(rt):
            raise ValueError(f"repeat_time {rt} > 1 must be an integer")
        records = records * int(rt)
    return records


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB 448x448 bicubic, scaled to [0, 1], ImageNet-normalised, CHW float32."""
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def tile_image(img: Image.Image, *, max_num: int, min_num: int = 1, use_thumbnail: bool = True,
               dynamic: bool = True) -> list[Image.Image]:
    plan = plan_tiles(img.width, img.height, dynamic=dynamic, min_num=min_num, max_num=max_num,
                      use_thumbnail=use_thumbnail)
    resized = img.resize((IMAGE_SIZE * plan.cols, IMAGE_SIZE * plan.rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop(box) for box in plan.boxes()]
    if plan.thumbnail:
        tiles.append(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
    return tiles


def jpeg_augment(img: Image.Image, rng: random.Random) -> Image.Image:
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


class SupervisedDataset(Dataset):
    """Samples of all datasets of a meta file, tokenized lazily in ``__getitem__``."""

    def __init__(self, meta_path: Path, tokenizer, template: Template, *, max_seq_length: int,
                 max_dynamic_patch: int, min_dynamic_patch: int = 1, use_thumbnail: bool = True,
                 dynamic_image_size: bool = True, tokens_per_tile: int = 256, seed: int = 42) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_length = max_seq_length
        self.min_dynamic_patch = min_dynamic_patch
        self.use_thumbnail = use_thumbnail
        self.dynamic = dynamic_image_size
        self.tokens_per_tile = tokens_per_tile
        self.seed = seed
        self.items: list[Item] = []
        self.lengths: dict[str, int] = {}
        for name, entry in load_meta(meta_path).items():
            records = read_records(entry, seed)
            self.lengths[name] = len(records)
            mdp = entry.max_dynamic_patch or max_dynamic_patch
            self.items += [Item(Path(entry.root), r, entry.data_augment, mdp, name) for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, idx: int) -> dict:
        item = self.items[idx]
        rec = item.record
        paths = image_paths(rec)
        per_image = max_patches_per_image(item.max_dynamic_patch, len(paths))
        rng = random.Random(self.seed * 1_000_003 + idx)
        tiles: list[Image.Image] = []
        counts: list[int] = []
        for rel in paths:
            with Image.open(item.root / rel) as im:
                img = im.convert("RGB")
            if item.data_augment:
                img = jpeg_augment(img, rng)
            t = tile_image(img, max_num=per_image, min_num=self.min_dynamic_patch,
                           use_thumbnail=self.use_thumbnail, dynamic=self.dynamic)
            tiles += t
            counts.append(len(t))
        sample = tokenize_sample(rec, self.template, self.tokenizer, counts, self.tokens_per_tile)
        if sample.total_tokens > self.max_seq_length:
            raise SampleError(f"sample {rec.get('id')!r} of {item.dataset} has {sample.total_tokens} tokens, "
                              f"more than max_seq_length {self.max_seq_length}")
        if sample.trained_tokens == 0:
            raise SampleError(f"sample {rec.get('id')!r} of {item.dataset} has no trained tokens")
        pixel_values = torch.stack([to_tensor(t) for t in tiles]) if tiles else torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
        return {
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "pixel_values": pixel_values,
        }

    def __getitem__(self, idx: int) -> dict:
        return self.load(idx)

    def token_length(self, idx: int) -> int:
        """A cheap length estimate for length-grouped sampling (text chars/4 + image tokens)."""
        rec = self.items[idx].record
        text = sum(len(t.get("value", "")) for t in rec["conversations"]) // 4
        return text + self.tokens_per_tile * len(image_paths(rec))


class Collator:
    """Right-pad ids and labels; concatenate every tile of the batch with ``image_flags``.

    A batch without any image gets one white dummy tile with flag 0 so that every rank runs
    the vision tower and DeepSpeed sees the same parameters take part on all ranks.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

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
        tiles = [b["pixel_values"] for b in batch if len(b["pixel_values"])]
        if tiles:
            pixel_values = torch.cat(tiles)
            flags = torch.ones(len(pixel_values), dtype=torch.long)
        else:
            white = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
            pixel_values = to_tensor(white).unsqueeze(0)
            flags = torch.zeros(1, dtype=torch.long)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixel_values,
                "image_flags": flags}
