"""The training data pipeline against the recipe: tiling, token counts, repeat_time, per-dataset
tile budgets, JPEG augmentation only where set, counted drops, batching and sample order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from backend.core.samples import IGNORE_INDEX
from backend.core.templates import get_template
from backend.core.tiling import plan_tiles
from worker.training.data import Collator, SupervisedDataset, tile_image, to_tensor
from worker.training.sampler import SeededSampler


# ------------------------------------------------------------- the recipe, written out as it reads
def recipe_grid(width, height, min_num, max_num, image_size=448):
    ratios = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if min_num <= i * j <= max_num}, key=lambda x: x[0] * x[1])
    aspect, area = width / height, width * height
    best_diff, best = float("inf"), (1, 1)
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best_diff, best = diff, r
        elif diff == best_diff and area > 0.5 * image_size * image_size * r[0] * r[1]:
            best = r
    return best


def recipe_tiles(image, min_num, max_num, use_thumbnail, image_size=448):
    cols, rows = recipe_grid(image.width, image.height, min_num, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    out = []
    for i in range(cols * rows):
        box = ((i % cols) * image_size, (i // cols) * image_size, (i % cols + 1) * image_size,
               (i // cols + 1) * image_size)
        out.append(resized.crop(box))
    if use_thumbnail and len(out) != 1:
        out.append(image.resize((image_size, image_size)))
    return out


SIZES = [(448, 448), (896, 448), (448, 896), (1000, 300), (300, 1000), (2000, 2000), (50, 50), (1344, 896),
         (800, 600), (1, 1000), (1920, 1080), (896, 897), (4000, 100), (640, 480), (1792, 448), (1000, 1000)]


@pytest.mark.parametrize("max_num", [1, 2, 6, 12])
def test_tile_counts_and_image_tokens_follow_the_recipe(max_num):
    for w, h in SIZES:
        cols, rows = recipe_grid(w, h, 1, max_num)
        plan = plan_tiles(w, h, max_num=max_num)
        assert (plan.cols, plan.rows) == (cols, rows), (w, h, max_num)
        expected_tiles = cols * rows + (1 if cols * rows > 1 else 0)
        assert plan.num_tiles == expected_tiles
        assert 256 * plan.num_tiles + 2 == 256 * expected_tiles + 2


def test_tie_rule_prefers_the_larger_grid_only_for_large_images():
    assert plan_tiles(448, 448, max_num=12).num_tiles == 1
    # 1x1, 2x2, 3x3 tie on aspect; 2000^2 exceeds half of the 3x3 grid's pixels (0.5 x 448^2 x 9)
    assert plan_tiles(2000, 2000, max_num=12).num_tiles == 9 + 1
    assert plan_tiles(600, 600, max_num=12).num_tiles == 1  # 600^2 < 0.5 x 448^2 x 4: stays 1x1
    assert plan_tiles(800, 600, max_num=12).num_tiles == 12 + 1  # 4x3 exactly


@pytest.mark.parametrize("size", [(900, 448), (1000, 1500), (448, 448)])
def test_crops_equal_the_recipe_pixel_for_pixel(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    ours = tile_image(img, max_num=6)
    ref = recipe_tiles(img, 1, 6, True)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.size == (448, 448) and np.array_equal(np.asarray(a), np.asarray(b))
    x = to_tensor(ours[0])
    manual = (np.asarray(ref[0], dtype=np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert torch.allclose(x, torch.from_numpy(manual.transpose(2, 0, 1)).float(), atol=1e-6)


# ------------------------------------------------------------------------------- the dataset
def conv(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from worker.demo_model import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    for name, (w, h) in {"wide.png": (1344, 448), "square.png": (448, 448), "tall.png": (448, 1344)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    plain = [
        {"id": "single", "image": "wide.png", "conversations": conv("What is it?", "Noise.")},
        {"id": "multi", "image": ["wide.png", "tall.png"],
         "conversations": conv("<image> and <image>: same?", "No.")},
        {"id": "text", "conversations": conv("Say hi.", "Hi.")},
        {"id": "too-long-image", "image": "wide.png", "conversations": conv("x " * 1000 + "<image>", "x")},
        {"id": "cut-answer", "conversations": conv("y " * 4000, "Lost.")},
        {"id": "bad-tags", "image": ["wide.png", "tall.png"], "conversations": conv("<image> one tag", "x")},
        {"id": "missing", "image": "nope.png", "conversations": conv("?", "x")},
        {"id": "long-answer", "conversations": conv("Go.", "z " * 3000)},
    ]
    aug = [{"id": f"a{i}", "image": "wide.png", "conversations": conv(f"Q{i}?", f"A{i}.")} for i in range(4)]
    (root / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
    (root / "aug.jsonl").write_text("".join(json.dumps(r) + "\n" for r in aug))
    meta = {"plain": {"root": str(root), "annotation": str(root / "plain.jsonl"), "data_augment": False,
                      "repeat_time": 2, "length": 7},
            "aug": {"root": str(root), "annotation": str(root / "aug.jsonl"), "data_augment": True,
                    "repeat_time": 0.5, "length": 4, "max_dynamic_patch": 1}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


@pytest.fixture(scope="module")
def dataset(meta, tokenizer):
    return SupervisedDataset(meta, tokenizer, get_template("internlm2-chat"), max_seq_length=1800,
                             max_dynamic_patch=4, seed=7)


def by_id(ds):
    return {ds.record(k)["id"]: k for k in range(len(ds))}


def test_repeat_time_and_counted_drops(dataset):
    assert dataset.lengths == {"plain": 16, "aug": 2}
    # Each bad line of "plain" appears twice (repeat_time 2) and is counted each time.
    assert dict(dataset.dropped) == {"truncated_image": 2, "empty_labels": 2, "invalid": 2, "unreadable_image": 2}
    assert len(dataset) == 18 - 8
    assert any("too-long-image" in e for e in dataset.drop_examples)


def test_tiles_and_tokens_per_sample(dataset):
    ids = by_id(dataset)
    single = dataset[ids["single"]]
    assert single["pixel_values"].shape == (4, 3, 448, 448)  # 1344x448 at max 4: 3x1 + thumbnail
    assert int((single["input_ids"] == 7).sum()) == 4 * 256  # <IMG_CONTEXT>
    multi = dataset[ids["multi"]]
    assert multi["pixel_values"].shape[0] == 3 + 3  # each image gets max(1, 4 // 2) = 2 tiles: 2x1 + thumbnail
    text = dataset[ids["text"]]
    assert text["pixel_values"].shape[0] == 0
    assert dataset.modality_lengths[ids["text"]] == len(text["input_ids"])
    aug = dataset[next(i for k, i in ids.items() if str(k).startswith("a"))]
    assert aug["pixel_values"].shape[0] == 1  # the dataset's own max_dynamic_patch 1


def test_jpeg_augmentation_only_where_set(dataset, meta):
    ids = by_id(dataset)
    root = meta.parent
    wide = Image.open(root / "wide.png").convert("RGB")
    plain = dataset[ids["single"]]["pixel_values"]
    expected = torch.stack([to_tensor(t) for t in tile_image(wide, max_num=4)])
    assert torch.equal(plain, expected)
    aug_id = next(k for k in ids if str(k).startswith("a"))
    augmented = dataset[ids[aug_id]]["pixel_values"][0]
    assert not torch.equal(augmented, to_tensor(wide))
    assert torch.equal(augmented, dataset[ids[aug_id]]["pixel_values"][0])  # same sample, same JPEG quality


def test_jpeg_augmentation_per_tile_with_its_own_quality(meta, tokenizer, tmp_path):
    """The reference re-encodes each tile (thumbnail included) at a quality of its own: every tile
    is exactly its crop JPEG-encoded at some quality in 75..100, and the qualities differ."""
    import io

    root = meta.parent
    rec = {"id": "w", "image": "wide.png", "conversations": conv("What is it?", "Noise.")}
    (tmp_path / "one.jsonl").write_text(json.dumps(rec) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps({"one": {"root": str(root), "annotation": str(tmp_path / "one.jsonl"),
                                                            "data_augment": True, "repeat_time": 1, "length": 1}}))
    ds = SupervisedDataset(tmp_path / "meta.json", tokenizer, get_template("internlm2-chat"), max_seq_length=1800,
                           max_dynamic_patch=4, seed=7)
    got = ds[0]["pixel_values"]
    crops = tile_image(Image.open(root / "wide.png").convert("RGB"), max_num=4)
    assert len(crops) == got.shape[0] == 4  # 3 tiles + thumbnail

    def jpeg(img, q):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        return to_tensor(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    qualities = [next(q for q in range(75, 101) if torch.equal(jpeg(c, q), got[k])) for k, c in enumerate(crops)]
    assert len(set(qualities)) > 1, qualities


def test_long_text_is_truncated_not_dropped(dataset):
    s = dataset[by_id(dataset)["long-answer"]]
    assert len(s["input_ids"]) == len(s["labels"]) == 1800
    assert (s["labels"] != IGNORE_INDEX).sum() > 1000


def test_labels_only_on_the_answer(dataset, tokenizer):
    s = dataset[by_id(dataset)["text"]]
    trained = [int(t) for t, lab in zip(s["input_ids"], s["labels"], strict=True) if lab != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Hi.<|im_end|>"


def test_collator_pads_concatenates_and_adds_a_dummy_tile_only_without_images(dataset):
    ids = by_id(dataset)
    collate = Collator(pad_token_id=2)
    batch = collate([dataset[ids["single"]], dataset[ids["text"]]])
    assert batch["pixel_values"].shape[0] == 4 and batch["image_flags"].tolist() == [1] * 4
    n_text = len(dataset[ids["text"]]["input_ids"])
    assert batch["attention_mask"][1].sum() == n_text and (batch["input_ids"][1, n_text:] == 2).all()
    assert (batch["labels"][1, n_text:] == IGNORE_INDEX).all()
    text_only = collate([dataset[ids["text"]]])
    assert text_only["pixel_values"].shape == (1, 3, 448, 448) and text_only["image_flags"].tolist() == [0]


# ------------------------------------------------------------------------------- sample order
def test_length_grouped_order_is_seeded_and_sorted_per_megabatch():
    lengths = [5, 50, 7, 90, 3, 60, 8, 70, 1, 40, 9, 20]
    s = SeededSampler(lengths, seed=3, megabatch_size=4)
    first = s.order()
    assert sorted(first) == list(range(12))
    for k in range(0, 12, 4):
        mb = [lengths[i] for i in first[k:k + 4]]
        assert mb == sorted(mb, reverse=True)  # one micro-batch per mega-batch: sorted, longest first
    assert SeededSampler(lengths, seed=3, megabatch_size=4).order() == first
    s.set_epoch(1)
    assert s.order() != first
    assert SeededSampler(lengths, seed=3).order() != first


def test_length_grouping_balances_the_micro_batches_of_a_step():
    """2 ranks x 2 samples: each step's 4 samples (of similar length) are dealt so that the two
    micro-batches carry balanced totals, not the two longest to rank 0 every step."""
    lengths = [100, 10, 90, 20, 80, 30, 70, 40, 60, 50, 55, 45]
    s = SeededSampler(lengths, seed=0, megabatch_size=4, chunks=2)
    order = s.order()
    assert sorted(order) == list(range(12))
    for k in range(0, 12, 4):
        mega = sorted((lengths[i] for i in order[k:k + 4]), reverse=True)
        a, b = [lengths[i] for i in order[k:k + 2]], [lengths[i] for i in order[k + 2:k + 4]]
        assert sorted(a + b, reverse=True) == mega
        # the greedy deal: longest and shortest together, the two middle ones together
        assert sorted([sorted(a), sorted(b)]) == sorted([sorted([mega[0], mega[3]]), sorted([mega[1], mega[2]])])
    assert SeededSampler(lengths, seed=0, megabatch_size=4, chunks=2).order() == order  # seeded


def test_balanced_chunks_golden():
    from worker.training.sampler import balanced_chunks

    lengths = {0: 9, 1: 8, 2: 5, 3: 4, 4: 2, 5: 1}
    assert balanced_chunks([0, 1, 2, 3, 4, 5], lengths, 2) == [[0, 3, 4], [1, 2, 5]]
    assert balanced_chunks([0, 1, 2, 3, 4, 5], lengths, 3) == [[0, 5], [1, 4], [2, 3]]
    assert balanced_chunks([0, 1, 2, 3, 4], lengths, 2) == [[0, 2, 4], [1, 3]]  # uneven: round-robin
