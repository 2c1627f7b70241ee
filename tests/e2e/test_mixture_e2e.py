"""Training on mixtures through the product (issue 17): a studio (API + worker, embedded mode)
runs real torchrun + DeepSpeed jobs on the tiny demo model.

- two registered datasets with ``repeat_time`` 2 and 0.5: the job trains on the recipe's counts,
  shows them per dataset, evaluates each held-out part and the whole, and its export carries
  the tiling it trained with; rerunning its ``command.txt`` by hand writes to a fresh folder;
- a seed-style meta file with relative paths on shared storage: ``vlstudio datasets validate``
  (run from another folder) and the job resolve them the same way, and a missing file is named
  with its entry and path by both.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.core.demo_data import generate, write_folder, write_zip
from tests.conftest import REPO, start_studio, stop_studio

pytestmark = pytest.mark.slow
FINISHED = ("succeeded", "failed", "cancelled")
LEAN = {"nproc_per_node": 1, "zero_stage": 2, "per_device_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
        "max_steps": 2, "max_dynamic_patch": 2}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixture")
    (tmp / "shared").mkdir()
    s = start_studio(tmp, extra_env={"VLSTUDIO_DATA_ROOTS": str(tmp / "shared")})
    s.shared = tmp / "shared"  # type: ignore[attr-defined]
    yield s
    stop_studio(s)


def register(studio, tmp: Path, name: str, n: int, seed: int, val_fraction: float = 0.0,
             validation: list[dict] | None = None) -> dict:
    path = write_zip(tmp / f"{name}.zip", n=n, seed=seed)
    extra = {"validation": ("val.jsonl", "".join(json.dumps(r) + "\n" for r in validation).encode(),
                            "application/jsonl")} if validation else {}
    with open(path, "rb") as f, studio.api as api:
        r = api.post("/datasets", files={"file": (path.name, f, "application/zip"), **extra},
                     data={"name": name, **({} if validation else {"val_fraction": str(val_fraction)})})
    assert r.status_code == 201, r.text
    return r.json()


def submit(studio, mixture: dict, **hyper) -> dict:
    with studio.api as api:
        r = api.post("/jobs", json={"mixture": mixture, "model_id": 1, "preset": "demo",
                                    "hyperparameters": {**LEAN, **hyper}})
    assert r.status_code == 201, r.text
    return r.json()


def metrics(studio, job_id: int) -> list[dict]:
    with studio.api as api:
        return [m["values"] for m in api.get(f"/jobs/{job_id}/metrics").json()]


@pytest.fixture(scope="module")
def two_datasets(studio, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    dots = register(studio, tmp, "dots", n=10, seed=1, val_fraction=0.3)  # held out: 3 and 2 (unequal)
    bars = register(studio, tmp, "bars", n=8, seed=2, val_fraction=0.25)
    job = submit(studio, {"datasets": [{"dataset_id": dots["id"], "repeat_time": 2},
                                       {"dataset_id": bars["id"], "repeat_time": 0.5, "data_augment": True}]},
                 eval_steps=2)
    done = studio.wait_job(job["id"], timeout=600)
    assert done["status"] == "succeeded", (done, studio.worker_log())
    return dots, bars, done


def test_two_dataset_mixture_trains_on_the_recipe_counts(two_datasets):
    dots, bars, job = two_datasets
    n_dots, n_bars = dots["num_samples"], bars["num_samples"]
    assert (n_dots, n_bars) == (7, 6)  # after the held-out parts
    rows = {r["name"]: r for r in job["mixture"]["datasets"]}
    expected = {"dots": 2 * n_dots, "bars": int(n_bars * 0.5)}  # 14 and 3
    assert {k: rows[k]["samples"] for k in expected} == expected
    # what the trainer really indexed, per dataset, stored with the job
    assert {k: rows[k]["trained"]["samples"] for k in expected} == expected
    assert {k: rows[k]["trained"]["kept"] for k in expected} == expected
    assert all(rows[k]["trained"]["tokens"] > 0 and rows[k]["trained"]["images"] == expected[k] for k in expected)
    assert job["mixture"]["trained"]["samples"] == sum(expected.values())
    meta = json.loads((Path(job["run_dir"]) / "meta.json").read_text())
    assert [(k, v["repeat_time"], v["data_augment"]) for k, v in meta.items()] == [("dots", 2, False),
                                                                                  ("bars", 0.5, True)]


def test_mixture_evaluates_each_held_out_part_and_the_whole(studio, two_datasets):
    _, _, job = two_datasets
    evals = {k for m in metrics(studio, job["id"]) for k in m if k.startswith("eval_loss")}
    assert evals == {"eval_loss", "eval_loss/dots", "eval_loss/bars"}
    held_out = json.loads((Path(job["run_dir"]) / "eval_meta.json").read_text())
    assert {k: v["length"] for k, v in held_out.items()} == {"dots": 3, "bars": 2}


def evaluate(studio, body: dict) -> dict:
    with studio.api as api:
        r = api.post("/evaluations", json={"params": {"max_new_tokens": 6}, **body})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 300
        while (ev := api.get(f"/evaluations/{r.json()['id']}").json())["status"] not in FINISHED:
            assert time.monotonic() < deadline, (ev, studio.worker_log())
            time.sleep(0.5)
        assert ev["status"] == "succeeded", (ev, studio.worker_log())
        return {**ev, "items": api.get(f"/evaluations/{ev['id']}/results").json()["items"]}


def test_evaluation_on_the_mixtures_held_out_parts_per_dataset_and_overall(studio, two_datasets, tmp_path):
    """A job's mixture evaluated on its held-out parts; then golden values: the same samples,
    registered again with the base model's own answer as the reference of the first 2 of dots'
    3 and 1 of bars' 2, must score exactly 2/3 and 1/2 per dataset and 3/5 overall (every sample
    counts once, not the mean of the datasets' scores, 7/12), and dots alone scores as its part."""
    _, _, job = two_datasets
    mixed = evaluate(studio, {"mixture": {"job_id": job["id"]}, "models": [{"model_id": 1}, {"job_id": job["id"]}]})
    assert [(p["name"], p["lines"]) for p in mixed["mixture"]["datasets"]] == [("dots", 3), ("bars", 2)]
    assert mixed["total"] == mixed["done"] == 2 * 5
    for model in mixed["summary"]:
        assert [(d["name"], d["n"]) for d in model["datasets"]] == [("dots", 3), ("bars", 2)] and model["n"] == 5
    assert [i["dataset"] for i in mixed["items"]] == ["dots"] * 3 + ["bars"] * 2

    known = {}
    for name, n, seed, hits in (("dots", 10, 1, 2), ("bars", 8, 2, 1)):
        records = {str(r["id"]): r for _, _, r in generate(n, seed)}
        items = [i for i in mixed["items"] if i["dataset"] == name]
        val = [{**records[i["id"]], **({"answers": [i["predictions"][0]]} if j < hits else {})}
               for j, i in enumerate(items)]
        known[name] = register(studio, tmp_path, f"{name}-known", n=n, seed=seed, validation=val)
    golden = evaluate(studio, {"mixture": {"datasets": [{"dataset_id": known["dots"]["id"], "max_dynamic_patch": 1},
                                                         {"dataset_id": known["bars"]["id"]}]},
                               "models": [{"model_id": 1}], "metrics": ["exact_match", "anls"]})
    with studio.api as api:  # each part is tiled with its own budget (1 tile: a square image's tiling anyway)
        lines = [x["line"] for x in api.get(f"/evaluations/{golden['id']}/logs").json()]
    tiling = {p: next(x for x in lines if f" on {p}, " in x) for p in ("dots-known", "bars-known")}
    assert "tiling dynamic max 1 tiles," in tiling["dots-known"] and "max 1 tiles," not in tiling["bars-known"], tiling
    # the same sample gets the same answer in either mixture
    assert [i["predictions"][0] for i in golden["items"]] == [i["predictions"][0] for i in mixed["items"]]
    (base,) = golden["summary"]
    assert {d["name"]: d["metrics"] for d in base["datasets"]} == {
        "dots-known": {"exact_match": pytest.approx(2 / 3), "anls": pytest.approx(2 / 3)},
        "bars-known": {"exact_match": 0.5, "anls": 0.5}}, base
    assert base["metrics"] == {"exact_match": pytest.approx(3 / 5), "anls": pytest.approx(3 / 5)}, base
    # one dataset evaluated alone (the one-split path) scores as its part of the mixture
    alone = evaluate(studio, {"dataset_id": known["dots"]["id"], "models": [{"model_id": 1}],
                              "metrics": ["exact_match", "anls"]})
    assert alone["summary"][0]["metrics"] == base["datasets"][0]["metrics"] and alone["summary"][0]["n"] == 3
    assert [i["predictions"][0] for i in alone["items"]] == [i["predictions"][0] for i in golden["items"][:3]]


#: VQAv2's and TextVQA's release layouts: the questions and the annotation file of ten answers
VQA_FILES = {"vqav2_val": ("vqav2_val.jsonl", "v2_mscoco_val2014_annotations.json"),
             "textvqa_val": ("textvqa_val.jsonl", "textvqa_val_annotations.json")}


def vqa_benchmark(folder: Path, name: str, answers: list[list[str]], seed: int) -> Path:
    """A handful of samples in ``name``'s release layout (questions, images where the guide's paths
    put them, the ten human answers per question in the annotation file)."""
    from tests.eval.benchmark_layouts import image

    questions, annotations = VQA_FILES[name]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, anns = [], []
    for i, ans in enumerate(answers):
        (folder / "images" / f"p{i}.jpg").write_bytes(image(seed + i, "JPEG"))
        rows.append({"image": f"data/{folder.name}/images/p{i}.jpg", "question": f"What is written on sign {i}?",
                     "question_id": seed + i})
        anns.append({"question_id": seed + i, "answers": [{"answer": a} for a in (ans * 10)[:10]]})
    (folder / questions).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / annotations).write_text(json.dumps({"annotations": anns}))
    return folder


def register_benchmark(studio, name: str, folder: Path, replace: bool = False) -> dict:
    with studio.api as api:
        r = api.post("/benchmarks", json={"name": name, "path": str(folder), "replace": replace})
    assert r.status_code == 201, r.text
    return r.json()


def test_benchmark_suite_for_the_base_and_its_fine_tune_is_one_table(studio, two_datasets):
    """A benchmark suite (issue 23): two registered benchmarks (VQAv2's and TextVQA's layout, 3
    and 2 samples with ten answers each) for the base model and the mixture job's fine-tune, each
    with its card's tiling and lengths; one table (rows: benchmark figures, columns: models) with
    its CSV/JSON exports; samples/s in the progress. Golden values: registered again with the two
    models' own answers as the ten references of 2 of 3 and 1 of 2 samples (an unrelated answer
    elsewhere), both models score VQA accuracy exactly 2/3 and 1/2."""
    _, _, job = two_datasets
    shared = studio.shared
    folders = {"vqav2_val": vqa_benchmark(shared / "vqav2", "vqav2_val", [["x"]] * 3, seed=40),
               "textvqa_val": vqa_benchmark(shared / "textvqa", "textvqa_val", [["y"]] * 2, seed=50)}
    for name, folder in folders.items():
        assert register_benchmark(studio, name, folder)["samples"] == (3 if name == "vqav2_val" else 2)
    models = [{"model_id": 1}, {"job_id": job["id"]}]
    suite = evaluate(studio, {"benchmarks": list(folders), "models": models, "params": {}})
    labels = [m["label"] for m in suite["models"]]
    assert labels[1] == f"job {job['id']}"
    assert [b["name"] for b in suite["benchmarks"]["benchmarks"]] == ["vqav2_val", "textvqa_val"]
    assert suite["total"] == suite["done"] == 2 * 5 and suite["samples_per_second"] > 0
    assert [i["dataset"] for i in suite["items"]] == ["vqav2_val"] * 3 + ["textvqa_val"] * 2
    with studio.api as api:
        lines = [x["line"] for x in api.get(f"/evaluations/{suite['id']}/logs").json()]
        table = api.get(f"/evaluations/{suite['id']}/table").json()
    # each benchmark as the guide runs it (the fine-tune trained with 2 tiles: the card's 6 win)
    runs = [x for x in lines if " on vqav2_val, " in x or " on textvqa_val, " in x]
    assert len(runs) == 4 and all("tiling dynamic max 6 tiles, greedy, 1-10 new tokens" in x for x in runs), runs
    assert any(" samples/s" in x for x in lines)
    assert table["models"] == labels
    assert [(r["benchmark"], r["figure"], r["n"], r["unit"]) for r in table["rows"]] == [
        ("vqav2_val", "vqa_accuracy", 3, "percent"), ("textvqa_val", "vqa_accuracy", 2, "percent")]

    # golden values: both models' own answers as the references of some samples
    preds = {name: [i["predictions"] for i in suite["items"] if i["dataset"] == name] for name in folders}
    assert not any("zebra" in p.lower() for ps in preds.values() for pair in ps for p in pair), preds
    hits = {"vqav2_val": 2, "textvqa_val": 1}
    for (name, folder), seed in zip(folders.items(), (40, 50), strict=True):
        # five answers each (ten in all): leaving any one out still leaves 4 matches (>= 3: full score)
        answers = [pair if j < hits[name] else ["zebra"] for j, pair in enumerate(preds[name])]
        vqa_benchmark(folder, name, answers, seed=seed)
        register_benchmark(studio, name, folder, replace=True)
    golden = evaluate(studio, {"benchmarks": list(folders), "models": models, "params": {}})
    assert [i["predictions"] for i in golden["items"]] == [i["predictions"] for i in suite["items"]]
    with studio.api as api:
        table = api.get(f"/evaluations/{golden['id']}/table").json()
        as_csv = api.get(f"/evaluations/{golden['id']}/table", params={"format": "csv"})
        as_json = api.get(f"/evaluations/{golden['id']}/table", params={"format": "json"})
    assert table["models"] == labels
    assert [(r["benchmark"], r["figure"], r["values"]) for r in table["rows"]] == [
        ("vqav2_val", "vqa_accuracy", [pytest.approx(2 / 3)] * 2), ("textvqa_val", "vqa_accuracy", [0.5, 0.5])]
    assert table["rows"][1]["published"] == [50.0, 50.0]
    assert as_csv.status_code == 200 and list(csv.reader(as_csv.text.splitlines())) == [
        ["benchmark", "figure", "samples", *labels],
        ["vqav2_val", "vqa_accuracy", "3", repr(2 / 3), repr(2 / 3)],
        ["textvqa_val", "vqa_accuracy", "2", "0.5", "0.5"]], as_csv.text
    assert as_json.json() == {"models": labels, "rows": [
        {"benchmark": "vqav2_val", "figure": "vqa_accuracy", "n": 3, "values": [2 / 3, 2 / 3]},
        {"benchmark": "textvqa_val", "figure": "vqa_accuracy", "n": 2, "values": [0.5, 0.5]}]}


def test_export_carries_the_tiling_it_trained_with(two_datasets, tmp_path):
    from worker.convert.exporter import export_model

    _, _, job = two_datasets
    final = Path(job["run_dir"]) / "final"
    assert json.loads((final / "config.json").read_text())["max_dynamic_patch"] == 2  # the base model has 6
    export_model(final, tmp_path / "original", "original")
    exported = json.loads((tmp_path / "original" / "config.json").read_text())
    assert (exported["max_dynamic_patch"], exported["min_dynamic_patch"]) == (2, 1)


def test_rerunning_command_txt_by_hand_writes_to_a_fresh_folder(studio, two_datasets):
    _, _, job = two_datasets
    run = Path(job["run_dir"])
    before = {p: p.read_bytes() for p in (run / "metrics.jsonl", run / "final" / "model.safetensors")}
    cmd = shlex.split((run / "command.txt").read_text())
    env = {k: v for k, v in os.environ.items() if k != "VLSTUDIO_WORKER_RUN"}
    # As a user would, while the studio's worker runs (its reaper must leave a rerun by hand alone).
    # A session of its own: whatever signals the rerun's process group cannot reach this test.
    proc = subprocess.Popen(cmd, cwd=run, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-4000:]
    assert f"writing to {run / 'rerun-1'}" in stdout
    assert all(p.read_bytes() == data for p, data in before.items()), "the job's own outputs were overwritten"
    assert (run / "rerun-1" / "final" / "config.json").exists()
    assert [m["step"] for m in map(json.loads, (run / "rerun-1" / "metrics.jsonl").read_text().splitlines())
            if "loss" in m] == [1, 2]


def seed_meta(shared: Path) -> Path:
    """The seed's layout: the meta file in shell/data/, data under playground/, paths relative
    to the meta file's folder."""
    write_folder(shared / "playground" / "dots", n=8, seed=3)
    (shared / "shell" / "data").mkdir(parents=True)
    meta = {"dots_train": {"root": "../../playground/dots", "annotation": "../../playground/dots/annotations.jsonl",
                           "data_augment": False, "repeat_time": 0.5, "length": 8, "max_dynamic_patch": 1}}
    path = shared / "shell" / "data" / "mixture.json"
    path.write_text(json.dumps(meta, indent=2))
    return path


def validate(meta: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", "datasets", "validate", str(meta), "--workers", "1"],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_seed_style_meta_file_on_shared_storage_validates_and_trains(studio, tmp_path):
    meta = seed_meta(studio.shared)
    checked = validate(meta, cwd=tmp_path)  # another folder: relative paths are not taken from it
    assert checked.returncode == 0, checked.stdout + checked.stderr
    job = submit(studio, {"meta_path": str(meta)})
    assert job["dataset_id"] is None
    done = studio.wait_job(job["id"], timeout=600)
    assert done["status"] == "succeeded", (done, studio.worker_log())
    (row,) = done["mixture"]["datasets"]
    assert (row["name"], row["samples"], row["trained"]["kept"], row["max_dynamic_patch"]) == ("dots_train", 4, 4, 1)

    # one missing file: the validator and the job name the same entry and the same path
    gone = meta.parent / "../../playground/dots/gone.jsonl"
    data = json.loads(meta.read_text())
    data["dots_train"]["annotation"] = "../../playground/dots/gone.jsonl"
    meta.write_text(json.dumps(data))
    checked = validate(meta, cwd=tmp_path)
    assert checked.returncode == 1 and "dots_train" in checked.stdout and str(gone) in checked.stdout, checked.stdout
    with studio.api as api:
        r = api.post("/jobs", json={"mixture": {"meta_path": str(meta)}, "model_id": 1, "preset": "demo",
                                    "hyperparameters": LEAN})
    assert r.status_code == 422
    assert any("dots_train" in e["message"] and str(gone) in e["message"] for e in r.json()["errors"]), r.text
