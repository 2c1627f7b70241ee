"""A mixture in the training data pipeline (issue 17): one path rule for meta files in the
validator and the trainer, ``data_augment`` on its own dataset only, what each dataset
contributes, and where a rerun writes. No torchrun here (see tests/e2e/test_mixture_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from backend.core.meta import MetaError
from backend.core.sources import validate_path
from backend.core.spec import Hyperparameters, TrainingSpec
from backend.core.templates import get_template
from worker.training.callbacks import eval_loss_of
from worker.training.data import SupervisedDataset, tile_image, to_tensor
from worker.training.train import output_folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from worker.demo_model import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def conv(q: str, a: str) -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def relative_meta(tmp: Path) -> Path:
    """Two datasets sharing one image; the meta file in its own folder, every path relative."""
    data = tmp / "data"
    data.mkdir(parents=True)
    Image.effect_noise((448, 448), 60).convert("RGB").save(data / "noise.png")
    for name, n in (("plain", 3), ("aug", 4)):
        recs = [{"id": i, "image": "noise.png", "conversations": conv(f"{name} {i}?", "ok")} for i in range(n)]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp / "meta").mkdir()
    meta = {"plain": {"root": "../data", "annotation": "../data/plain.jsonl", "repeat_time": 2, "length": 3},
            "aug": {"root": "../data", "annotation": "../data/aug.jsonl", "data_augment": True, "repeat_time": 0.5,
                    "length": 4}}
    (tmp / "meta" / "meta.json").write_text(json.dumps(meta))
    return tmp / "meta" / "meta.json"


def load(meta: Path, tokenizer) -> SupervisedDataset:
    return SupervisedDataset(meta, tokenizer, get_template("internlm2-chat"), max_seq_length=1024,
                             max_dynamic_patch=1, seed=3)


def test_relative_paths_resolve_the_same_in_validation_and_training(tmp_path, tokenizer, monkeypatch):
    meta = relative_meta(tmp_path)
    monkeypatch.chdir(tmp_path)  # neither side may take relative paths from the current folder
    bundle = validate_path(meta, workers=1)
    assert bundle.ok, [i.message for i in bundle.issues]
    ds = load(meta, tokenizer)
    assert {k: r.lines for k, r in bundle.reports.items()} == {"plain": 3, "aug": 4}
    assert {k: (v["samples"], v["kept"]) for k, v in ds.per_dataset().items()} == {"plain": (6, 6), "aug": (2, 2)}

    (tmp_path / "data" / "aug.jsonl").unlink()
    missing = str(tmp_path / "meta" / ".." / "data" / "aug.jsonl")
    errors = [i.message for i in validate_path(meta, workers=1).issues if i.severity == "error"]
    assert errors == [f"aug: annotation {missing} not found (relative paths resolve from {tmp_path / 'meta'})"]
    with pytest.raises(MetaError) as e:
        load(meta, tokenizer)
    assert e.value.problems == errors


def test_data_augment_changes_the_pixels_of_its_own_dataset_only(tmp_path, tokenizer):
    ds = load(relative_meta(tmp_path), tokenizer)
    img = Image.open(tmp_path / "data" / "noise.png").convert("RGB")
    clean = torch.stack([to_tensor(t) for t in tile_image(img, max_num=1)])
    seen = {"plain": 0, "aug": 0}
    for k in range(len(ds)):
        name = ds.dataset_of(k)
        same = torch.equal(ds[k]["pixel_values"], clean)
        assert same == (name == "plain"), f"{name} sample {k}"
        seen[name] += 1
    assert seen == {"plain": 6, "aug": 2}


def test_per_dataset_subsets(tmp_path, tokenizer):
    ds = load(relative_meta(tmp_path), tokenizer)
    assert [len(ds.subset(n)) for n in ("plain", "aug")] == [6, 2]
    assert sum(v["tokens"] for v in ds.per_dataset().values()) == sum(ds.modality_lengths)


def spec(run: Path, resume: str | None = None) -> TrainingSpec:
    return TrainingSpec(job_id=1, model_path="m", template="internlm2-chat", meta_path="meta.json",
                        output_dir=str(run), hyper=Hyperparameters(), resume_from_checkpoint=resume)


def test_a_rerun_writes_to_a_fresh_folder_unless_told_otherwise(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert output_folder(spec(run), None, in_place=False) == run  # the first launch
    (run / "metrics.jsonl").write_text("{}\n")
    assert output_folder(spec(run), None, in_place=False) == run / "rerun-1"
    (run / "rerun-1").mkdir()
    assert output_folder(spec(run), None, in_place=False) == run / "rerun-2"
    assert output_folder(spec(run), None, in_place=True) == run  # --in-place, or the worker's launch
    assert output_folder(spec(run), tmp_path / "x", in_place=False) == tmp_path / "x"  # --output-dir
    assert output_folder(spec(run, "latest"), None, in_place=False) == run  # resuming itself
    assert output_folder(spec(run, str(run / "checkpoints" / "checkpoint-2")), None, in_place=False) == run
    assert output_folder(spec(run, "/elsewhere/checkpoint-2"), None, in_place=False) == run / "rerun-2"


def test_eval_rows_name_the_dataset():
    assert eval_loss_of({"eval_loss": 1.5}) == ("eval_loss", 1.5)
    assert eval_loss_of({"eval_overall_loss": 1.0, "eval_overall_runtime": 2}) == ("eval_loss", 1.0)
    assert eval_loss_of({"eval_dots_v2_loss": 0.5}) == ("eval_loss/dots_v2", 0.5)
    assert eval_loss_of({"loss": 3.0}) == (None, None)
