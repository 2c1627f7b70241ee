"""Training data: meta file -> samples -> tensors.

Everything the dataset preview must agree with comes from the pure core: ``repeat_time``
(:mod:`backend.core.meta`), the tile grid (:mod:`backend.core.tiling`), the prompt and its
label mask (:mod:`backend.core.samples`). What is added here is pixels and the index.

The index gives every sample's tile counts (from the image headers, no decoding) and its
exact token length before training. That is what lets a sample that cannot be trained be
dropped *and counted*, instead of the reference's assert-and-retry-another (which silently
changes the data), and gives ``group_by_length`` and packing exact lengths. It is compact,
cached and shared (:mod:`backend.core.data_index`): built once per file and setting, then
memory-mapped by every rank, worker, restart and later job.
"""

from __future__ import annotations

import io
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from backend.core.data_index import DROP_REASONS, AnnotationIndex, IndexSettings, Progress, load_index
from backend.core.meta import MetaError, load_meta, locate_entry, meta_base, subsample_indices
from backend.core.samples import IGNORE_INDEX, image_paths, tokenize_sample
from backend.core.templates import Template
from backend.core.tiling import IMAGE_SIZE, max_patches_per_image, plan_tiles

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
__all__ = ["DROP_REASONS", "Collator", "SupervisedDataset", "tile_image", "to_tensor"]


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


class SupervisedDataset(Dataset):
    """The kept samples of every dataset of a meta file, in meta order.

    Each annotation file has its compact index (:mod:`backend.core.data_index`): memory-mapped
    arrays of line offsets, tile counts, lengths and drop reasons, from the cache when the same
    file was indexed with the same tokenizer, template, tiling and length before (``cache_dir``
    None: built in memory, nothing kept). What a rank holds per sample is a few numpy integers;
    a record is parsed from its line when the sample is read."""

    def __init__(self, meta_path: Path, tokenizer, template: Template, *, max_seq_length: int,
                 max_dynamic_patch: int, min_dynamic_patch: int = 1, use_thumbnail: bool = True,
                 dynamic_image_size: bool = True, image_size: int = IMAGE_SIZE, tokens_per_tile: int = 256,
                 seed: int = 42, cache_dir: Path | None = None, progress: Progress | None = None,
                 cancel: Callable[[], bool] | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_length = max_seq_length
        self.min_dynamic_patch = min_dynamic_patch
        self.use_thumbnail = use_thumbnail
        self.dynamic = dynamic_image_size
        self.image_size = image_size
        self.tokens_per_tile = tokens_per_tile
        self.seed = seed
        #: per dataset of the meta file: its name, index, data_augment, max_dynamic_patch
        self.sources: list[Source] = []
        #: samples per dataset after repeat_time, before drops
        self.lengths: dict[str, int] = {}
        self.dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.dropped_by_dataset: Counter[str] = Counter()
        self.drop_examples: list[str] = []
        settings = dict(max_seq_length=max_seq_length, min_dynamic_patch=min_dynamic_patch,
                        use_thumbnail=use_thumbnail, dynamic_image_size=dynamic_image_size, image_size=image_size,
                        tokens_per_tile=tokens_per_tile)
        src, row, item = [], [], []
        for name, root, annotation, entry, mdp in self._entries(Path(meta_path), max_dynamic_patch):
            index = load_index(annotation, root, tokenizer, template,
                               IndexSettings(max_dynamic_patch=mdp, **settings),
                               cache_dir=cache_dir, name=name, progress=progress, cancel=cancel)
            k = len(self.sources)
            self.sources.append(Source(name, index, entry.data_augment, mdp))
            order = subsample_indices(index.rows, entry.repeat_time)
            first_item = sum(self.lengths.values())  # the sample's place among all, for its RNG
            self.lengths[name] = len(order)
            reasons = np.asarray(index.reason)[order]
            kept = reasons == 0
            src.append(np.full(int(kept.sum()), k, dtype=np.int32))
            row.append(order[kept].astype(np.int64))
            item.append(np.flatnonzero(kept).astype(np.int64) + first_item)
            self._count_drops(name, index, order, reasons, first_item)
        #: per kept sample: its dataset (index into sources), line row, and position among all samples
        self._src = np.concatenate(src) if src else np.zeros(0, dtype=np.int32)
        self._row = np.concatenate(row) if row else np.zeros(0, dtype=np.int64)
        self._item = np.concatenate(item) if item else np.zeros(0, dtype=np.int64)
        self._lengths = self._gather(lambda s: np.asarray(s.index.length)).astype(np.int64)
        self._tiles = self._gather(lambda s: s.index.tile_sums())
        self._images = self._gather(lambda s: s.index.image_counts())
        self._files: dict[int, tuple[int, object]] = {}

    def _entries(self, meta_path: Path, max_dynamic_patch: int):
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
            yield name, Path(root), Path(annotation), entry, entry.max_dynamic_patch or max_dynamic_patch

    def _count_drops(self, name: str, index: AnnotationIndex, order: np.ndarray, reasons: np.ndarray,
                     first_item: int) -> None:
        counts = np.bincount(reasons, minlength=len(DROP_REASONS) + 1)
        for k, r in enumerate(DROP_REASONS):
            self.dropped[r] += int(counts[k + 1])
        self.dropped_by_dataset[name] += int(len(order) - counts[0])
        if len(self.drop_examples) >= 10:
            return
        examples = index.examples()
        for pos in np.flatnonzero(reasons != 0)[:10 - len(self.drop_examples)]:
            e = examples.get(int(order[pos]))
            if e is None:  # beyond the examples kept with the index
                break
            sid = e["id"] if e["has_id"] else first_item + int(pos)
            self.drop_examples.append(f"{name} sample {sid!r}: {e['why']}")

    def _gather(self, per_row) -> np.ndarray:
        """A per-row array of each source, taken at the kept samples (in sample order)."""
        out = np.zeros(len(self._row), dtype=np.int64)
        for k, source in enumerate(self.sources):
            mine = self._src == k
            out[mine] = np.asarray(per_row(source))[self._row[mine]]
        return out

    @property
    def index_report(self) -> list[dict]:
        """Each dataset's index: its cache key and what the key is made of, reused or built."""
        return [{"dataset": s.name, **{k: s.index.meta.get(k) for k in (
            "key", "parts", "rows", "kept", "reused", "build_seconds", "build_cpu_seconds", "workers",
            "waited_seconds", "tokenized", "path")}} for s in self.sources]

    @property
    def tokenized(self) -> int:
        """Lines this process tokenized to build indexes (0 when every index came from the cache)."""
        return sum(0 if s.index.meta.get("reused") else int(s.index.meta.get("tokenized", 0)) for s in self.sources)

    def per_dataset(self) -> dict[str, dict[str, int]]:
        """What each dataset contributes to an epoch: samples after ``repeat_time``, kept after
        the drops, and the kept samples' tokens (after truncation), images and tiles."""
        out = {}
        for k, s in enumerate(self.sources):
            mine = self._src == k
            out[s.name] = {"samples": self.lengths[s.name], "kept": int(mine.sum()),
                           "dropped": self.dropped_by_dataset[s.name], "tokens": int(self._lengths[mine].sum()),
                           "images": int(self._images[mine].sum()), "tiles": int(self._tiles[mine].sum())}
        return out

    def subset(self, name: str) -> Subset:
        """The kept samples of one dataset of the meta file (per-dataset evaluation)."""
        k = next(i for i, s in enumerate(self.sources) if s.name == name)
        return Subset(self, np.flatnonzero(self._src == k).tolist())

    @property
    def modality_lengths(self) -> np.ndarray:
        """Token length of each kept sample (after truncation)."""
        return self._lengths

    @property
    def tile_counts(self) -> np.ndarray:
        """Tiles of each kept sample (all its images)."""
        return self._tiles

    @property
    def image_counts(self) -> np.ndarray:
        return self._images

    def dataset_of(self, idx: int) -> str:
        return self.sources[int(self._src[idx])].name

    def record(self, idx: int) -> dict:
        """The annotation record of kept sample ``idx``, parsed from its line."""
        source = self.sources[int(self._src[idx])]
        return source.index.read(int(self._row[idx]), self._file(int(self._src[idx])))

    def _file(self, k: int):
        """This process's open annotation file of source ``k`` (a dataloader worker opens its own)."""
        pid, f = self._files.get(k, (None, None))
        if pid != os.getpid():
            f = open(self.sources[k].index.annotation, "rb")  # noqa: SIM115 (kept open for the reads)
            self._files[k] = (os.getpid(), f)
        return f

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return len(self._row)

    # ---------------------------------------------------------------------------- a sample
    def __getitem__(self, idx: int) -> dict:
        k, row = int(self._src[idx]), int(self._row[idx])
        source = self.sources[k]
        record = source.index.read(row, self._file(k))
        tiles_per_image = source.index.tiles(row)
        # Per-sample RNG: the JPEG quality is the same whichever rank or worker loads it, and on resume.
        rng = random.Random(self.seed * 1_000_003 + int(self._item[idx]))
        per_image = max_patches_per_image(source.max_dynamic_patch, len(tiles_per_image))
        root = source.index.root
        tiles: list[Image.Image] = []
        for rel in image_paths(record):
            with Image.open(root / rel) as im:
                img = im.convert("RGB")
            crops = tile_image(img, max_num=per_image, min_num=self.min_dynamic_patch,
                               use_thumbnail=self.use_thumbnail, dynamic=self.dynamic, size=self.image_size)
            tiles += [jpeg_augment(t, rng) for t in crops] if source.data_augment else crops
        if len(tiles) != sum(tiles_per_image):
            raise RuntimeError(f"{source.name} sample {record.get('id')!r}: the image changed since indexing")
        sample = tokenize_sample(record, self.template, self.tokenizer, tiles_per_image, self.tokens_per_tile)
        n = self.max_seq_length
        pixel_values = (torch.stack([to_tensor(t, self.image_size) for t in tiles]) if tiles
                        else torch.zeros(0, 3, self.image_size, self.image_size))
        return {"input_ids": torch.tensor(sample.input_ids[:n], dtype=torch.long),
                "labels": torch.tensor(sample.labels[:n], dtype=torch.long), "pixel_values": pixel_values}


@dataclass
class Source:
    """One dataset of the meta file: its name, compact index and recipe knobs."""

    name: str
    index: AnnotationIndex
    data_augment: bool
    max_dynamic_patch: int


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
