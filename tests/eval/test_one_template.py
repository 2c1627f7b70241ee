"""Issue 24: a transformers ``-hf`` checkpoint is validated, trained and evaluated with ONE
template. Dataset validation used to render it with ``internvl2_5`` (a system message it was never
trained with) while registration and training used its tokenizer's own chat template; now all of
them take the template from the model card, and the prompt each renders is the same."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data" / "families"
QA = [("What colour is the square?", "red"), ("What colour is the circle?", "blue"),
      ("Which shape is it?", "a square"), ("How many shapes?", "one")]


def upload_zip() -> bytes:
    """Four lines with 16 px images: one tile of the tiny -hf tower whatever the tile budget."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, colour in enumerate([(200, 30, 30), (30, 30, 200), (30, 200, 30), (90, 90, 90)]):
            png = io.BytesIO()
            Image.new("RGB", (16, 16), colour).save(png, format="PNG")
            zf.writestr(f"images/{i}.png", png.getvalue())
        zf.writestr("ann.jsonl", "".join(json.dumps({"id": i, "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}) + "\n"
            for i, (q, a) in enumerate(QA)))
    return buf.getvalue()


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_hf_model_is_validated_trained_and_evaluated_with_one_template(api, tmp_path):
    from transformers import AutoTokenizer

    from backend.core.eval_spec import EvaluationSpec, split_record
    from backend.core.samples import IGNORE_INDEX, tokenize_sample
    from backend.core.spec import TrainingSpec
    from backend.core.templates import render
    from backend.db.models import Dataset, Job
    from backend.db.session import session_scope
    from backend.services import dataset_checks
    from backend.services import models as model_svc
    from backend.settings import get_settings
    from worker.convert import import_checkpoint
    from worker.evaluation import launch as eval_launch
    from worker.evaluation.generation import Generator
    from worker.training import launch as training_launch
    from worker.training.data import SupervisedDataset
    from worker.training.train import data_settings, read_model_card, run_template

    # -- registration: the checkpoint imported as a user does
    src = tmp_path / "InternVL3_5-tiny-hf"
    shutil.copytree(DATA / "hf_qwen3", src)
    with session_scope() as s:
        model = model_svc.import_model(s, get_settings(), src, "tiny-hf", None, import_checkpoint)
        model_id, registered = model.id, model.template
    assert registered == "tokenizer"

    # -- validation: the upload's token check and the preview, with the model chosen
    r = api.post("/api/datasets", files={"file": ("qa.zip", upload_zip(), "application/zip")},
                 data={"model_id": str(model_id), "max_seq_length": "512", "val_fraction": "0.5"})
    assert r.status_code == 201, r.text
    ds = r.json()
    with session_scope() as s:
        ds.update(s.get(Dataset, ds["id"]).__dict__)  # its files: root, annotation, val_annotation
    report = api.get(f"/api/datasets/{ds['id']}/report?per_sample_limit=10").json()
    assert report["notes"] == [] and report["settings"]["template"] == "tokenizer"
    # the training part's first record, previewed by its line of the uploaded file (record i is line i + 1)
    record = json.loads(Path(ds["annotation"]).read_text().splitlines()[0])
    preview = api.get(f"/api/datasets/{ds['id']}/samples/{record['id'] + 1}", params={"model_id": model_id}).json()
    assert (preview["line"], preview["part"]) == (record["id"] + 1, "train")
    assert preview["text"] == f"<|im_start|>user\n<image>\n{record['conversations'][0]['value'][8:]}<|im_end|>\n" \
                              f"<|im_start|>assistant\n{record['conversations'][1]['value']}<|im_end|>\n"
    with session_scope() as s:
        checks = dataset_checks.checks_for(s, model_id, None)
    validated = checks.settings.template
    validated_ids = tokenize_sample(record, validated, checks.tokenizer, [1], checks.settings.tokens_per_tile).input_ids
    (row,) = [x for x in report["per_sample"] if x["id"] == str(record["id"])]
    assert row["tokens"] == len(validated_ids) == preview["tokens"]["counts"]["total"]

    # -- training: the job as the worker prepares its run, and the trainer's own template and data
    r = api.post("/api/jobs", json={"dataset_id": ds["id"], "model_id": model_id, "preset": "demo",
                                    "hyperparameters": {"max_steps": 2}})
    assert r.status_code == 201, r.text
    with session_scope() as s:
        training_launch.prepare_run(s.get(Job, r.json()["id"]), tmp_path / "run")
    spec, card = read_model_card(TrainingSpec.read(tmp_path / "run" / "spec.json"))
    assert spec.template == "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    trained = run_template(spec, card, tokenizer)
    dataset = SupervisedDataset(Path(spec.meta_path), tokenizer, trained, **data_settings(spec.hyper, card))
    assert render(record["conversations"], trained).text == preview["text"]
    trained_ids = [dataset[k]["input_ids"].tolist() for k in range(len(dataset))]
    assert validated_ids in trained_ids  # token for token what the check counted

    # -- evaluation: the run's spec as the worker writes it, and the program's generator
    r = api.post("/api/evaluations", json={"dataset_id": ds["id"], "models": [{"model_id": model_id}]})
    assert r.status_code == 201, r.text
    eval_launch.prepare_run(r.json()["id"], tmp_path / "eval")
    (m,) = EvaluationSpec.read(tmp_path / "eval" / "spec.json").models
    gen = Generator(Path(m.path), template=m.template)
    assert gen.template == trained == validated
    held_out = json.loads(Path(ds["val_annotation"]).read_text().splitlines()[0])
    turns, _, _ = split_record(held_out)
    with Image.open(Path(ds["root"]) / held_out["image"]) as im:
        prompt = gen.prompt(turns, [im.convert("RGB")])
    sample = tokenize_sample(held_out, validated, checks.tokenizer, [1], checks.settings.tokens_per_tile)
    first_trained = next(k for k, x in enumerate(sample.labels) if x != IGNORE_INDEX)
    assert prompt.input_ids == sample.input_ids[:first_trained]  # what the check counted before the answer
    assert gen.tokenizer.decode(prompt.input_ids).endswith(f"{turns[0]['value'][8:]}<|im_end|>\n"
                                                           "<|im_start|>assistant\n")
