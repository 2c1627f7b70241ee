"""Benchmarks as data: registration from each release layout of InternVL's evaluation guide, the
prompts and generation settings equal to the guide's scripts (reference data:
tools/make_benchmark_reference.py ran those scripts on the same tiny layouts), generation with the
demo model and scoring, all layouts in one shared run; bad layouts refused with file, line and
field, nothing left registered."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from backend.core.benchmarks import CATALOG, BenchmarkError, register_benchmark
from backend.core.eval_metrics import summarise
from backend.core.eval_spec import EvalModel, EvaluationSpec, benchmark_part
from tests.eval.benchmark_layouts import MME_TASKS, WRITERS, write_all
from worker.demo_model import build_demo_model

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "data" / "reference" / "benchmarks" / "prompts.json")
                       .read_text(encoding="utf-8"))


def test_generation_settings_equal_the_guides_scripts():
    for name, ref in REFERENCE["generation"].items():
        b = CATALOG[name]
        got = {"max_new_tokens": b.max_new_tokens, "min_new_tokens": b.min_new_tokens, "max_num": b.max_num}
        assert {k: got[k] for k in ref} == ref, name
    # the guide runs every benchmark with --dynamic and the default --max-num 6 (OCRBench: VLMEvalKit's 24)
    assert all(b.dynamic for b in CATALOG.values())
    assert {b.max_num for n, b in CATALOG.items() if n != "ocrbench"} == {6}


@pytest.mark.slow
def test_every_layout_registers_prompts_generates_and_scores(tmp_path, capsys):
    folders = write_all(tmp_path / "shared")
    registered = tmp_path / "benchmarks"
    for name, folder in folders.items():
        card = register_benchmark(name, folder, registered)
        assert card["samples"] == len(REFERENCE["prompts"][name]), name
        records = [json.loads(x) for x in (registered / name / "samples.jsonl").read_text().splitlines()]
        prompts = {r["id"]: r["conversations"][0]["value"] for r in records}
        assert prompts == REFERENCE["prompts"][name], name
    # MMBench's rotations carry their circular group; POPE's labels come from coco/coco_pope_<cat>.json
    mmb = [json.loads(x) for x in (registered / "mmbench_dev_en" / "samples.jsonl").read_text().splitlines()]
    assert {(r["id"], r["group"], r["main"]) for r in mmb} >= {("1000000", 0, False), ("1", 1, True)}
    pope = [json.loads(x) for x in (registered / "pope" / "samples.jsonl").read_text().splitlines()]
    assert [r["answers"] for r in pope if r["category"] == "random"] == [["yes"], ["no"]]

    # one evaluation program run over every benchmark with the demo model
    from worker.evaluation import run

    model = build_demo_model(tmp_path / "demo", seed=3)
    out = tmp_path / "eval"
    out.mkdir()
    parts = [benchmark_part(registered / name) for name in folders]
    assert {p.name: (p.dynamic, p.max_dynamic_patch, p.max_new_tokens, p.min_new_tokens, tuple(p.metrics))
            for p in parts} == {n: (b.dynamic, b.max_num, b.max_new_tokens, b.min_new_tokens, b.metrics)
                                for n, b in CATALOG.items() if n in folders}
    for p in parts:  # the demo model never says its end token: keep its replies short (CI time)
        p.max_new_tokens = min(p.max_new_tokens, 6)
    spec = EvaluationSpec(evaluation_id=1, parts=parts, output_dir=str(out), batch_size=16, max_new_tokens=8,
                          models=[EvalModel(label="demo", path=str(model), template="internlm2-chat")])
    spec.write(out / "spec.json")
    assert run.main(["--spec", str(out / "spec.json")]) == 0
    rows = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())["models"][0]
    by_part = {d["name"]: d for d in results["datasets"]}
    for part in parts:
        mine = [r for r in rows if r["dataset"] == part.name]
        assert len(mine) == len(REFERENCE["prompts"][part.name]), part.name
        assert set(mine[0]["scores"]) == set(part.metrics)
        figures, _ = summarise(part.metrics, mine)
        assert by_part[part.name]["metrics"] == figures, part.name
    # each benchmark's figures are its own: POPE's F1, MME's perception/cognition, OCRBench's count
    assert set(by_part["pope"]["metrics"]) >= {"pope_f1", "pope_precision"}
    assert set(by_part["mme"]["metrics"]) == {"mme_perception", "mme_cognition", "mme_total"}
    assert 0 <= by_part["ocrbench"]["metrics"]["ocrbench"] <= 3
    assert set(by_part["mmbench_dev_en"]["metrics"]) == {"multiple_choice", "mmbench_circular"}
    assert set(by_part["mme"]["breakdown"]["mme"]) == set(MME_TASKS)
    # the guide's tiling and generation lengths, per benchmark, as the program ran them
    log = capsys.readouterr().out
    for part in parts:
        assert re.search(rf"on {part.name}, template \S+, tiling dynamic max {part.max_dynamic_patch} tiles, "
                         rf"greedy, {part.min_new_tokens}-{part.max_new_tokens} new tokens", log), part.name


def _broken(tmp_path: Path, name: str, edit) -> tuple[Path, BenchmarkError]:  # noqa: ANN001
    folder = tmp_path / name
    WRITERS[name](folder)
    edit(folder)
    dest = tmp_path / "registered"
    with pytest.raises(BenchmarkError) as e:
        register_benchmark(name, folder, dest)
    assert not dest.exists() or not any(dest.iterdir()), "something was left registered"
    return folder, e.value


def _rewrite_line(path: Path, n: int, fn) -> None:  # noqa: ANN001
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[n - 1] = fn(lines[n - 1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("name, edit, where", [
    ("textvqa_val", lambda d: _rewrite_line(d / "textvqa_val.jsonl", 2, lambda s: s.replace('"question":', '"q":')),
     ("textvqa_val.jsonl", 2, "question")),
    ("docvqa_val", lambda d: (d / "val" / "documents" / "d1.png").unlink(), ("val.jsonl", 2, "image")),
    ("scienceqa_test", lambda d: _rewrite_line(d / "scienceqa_test_img.jsonl", 3,
                                               lambda s: s.replace('"answer": 1', '"answer": 7')),
     ("scienceqa_test_img.jsonl", 3, "answer")),
    ("mmbench_dev_en", lambda d: _rewrite_line(d / "mmbench_dev_20230712.tsv", 3,
                                               lambda s: s.rsplit("\t", 1)[0] + "\t" + "not-an-image-at-all" * 5),
     ("mmbench_dev_20230712.tsv", 3, "image")),
    ("pope", lambda d: _rewrite_line(d / "coco" / "coco_pope_random.json", 2, lambda s: ""),
     ("coco/coco_pope_random.json", None, "label")),
    ("mme", lambda d: (d / "MME_Benchmark_release_version" / "count" / "count_0.txt").write_text("no tab here\n"),
     ("MME_Benchmark_release_version/count/count_0.txt", 1, "answer")),
    ("ocrbench", lambda d: _rewrite_line(d / "OCRBench.tsv", 2, lambda s: s.replace("['STOP', 'stop sign']", "STOP")),
     ("OCRBench.tsv", 2, "answer")),
    ("seed_image", lambda d: (d / "seed.jsonl").unlink(), ("seed.jsonl", None, None)),
])
def test_bad_layouts_name_the_file_line_and_field_and_register_nothing(tmp_path, name, edit, where):
    _, err = _broken(tmp_path, name, edit)
    assert any((p["file"], p["line"], p["field"]) == where for p in err.problems), err.problems
    assert where[0] in str(err)


def test_a_registered_benchmark_is_not_replaced_silently(tmp_path):
    WRITERS["seed_image"](tmp_path / "seed")
    register_benchmark("seed_image", tmp_path / "seed", tmp_path / "reg")
    with pytest.raises(BenchmarkError, match="already registered"):
        register_benchmark("seed_image", tmp_path / "seed", tmp_path / "reg")
    shutil.rmtree(tmp_path / "seed" / "SEED-Bench-image")
    with pytest.raises(BenchmarkError):  # a failed replace keeps the registered one
        register_benchmark("seed_image", tmp_path / "seed", tmp_path / "reg", replace=True)
    assert (tmp_path / "reg" / "seed_image" / "samples.jsonl").exists()


def test_cli_registers_and_reports_problems(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from backend.cli import app
    from backend.settings import get_settings

    monkeypatch.setenv("VLSTUDIO_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        WRITERS["seed_image"](tmp_path / "seed")
        res = CliRunner().invoke(app, ["benchmarks", "register", "seed_image", str(tmp_path / "seed")])
        assert res.exit_code == 0 and "registered seed_image: 3 samples" in res.output, res.output
        assert (tmp_path / "data" / "benchmarks" / "seed_image" / "benchmark.json").exists()
        (tmp_path / "seed" / "seed.jsonl").write_text('{"image": "x.jpg"}\n')
        res = CliRunner().invoke(app, ["benchmarks", "register", "seed_image", str(tmp_path / "seed"), "--replace"])
        assert res.exit_code == 1 and "seed.jsonl:1 [text]: missing field 'text'" in res.output, res.output
        res = CliRunner().invoke(app, ["benchmarks", "list"])
        assert "registered, 3 samples" in res.output
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_api_registers_from_shared_storage_and_lists(api, tmp_path, monkeypatch):
    from backend.settings import get_settings

    shared = tmp_path / "shared"
    WRITERS["pope"](shared / "pope")
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(shared))
    get_settings.cache_clear()
    listed = {b["name"]: b for b in api.get("/api/benchmarks").json()}
    assert listed["pope"]["registered"] is False and listed["pope"]["max_new_tokens"] == 100
    assert api.get("/api/benchmarks/pope").status_code == 409  # not registered yet
    # outside the allowed roots: 403; a broken layout: 422 with file, line and field, nothing registered
    assert api.post("/api/benchmarks", json={"name": "pope", "path": str(tmp_path)}).status_code == 403
    (shared / "pope" / "coco" / "coco_pope_popular.json").unlink()
    r = api.post("/api/benchmarks", json={"name": "pope", "path": str(shared / "pope")})
    assert r.status_code == 422 and {"field": "path", "file": "coco/coco_pope_popular.json", "line": None,
                                     "layout_field": None, "message": "missing: the layout needs this file"} \
        in r.json()["errors"]
    assert api.get("/api/benchmarks/pope").status_code == 409
    WRITERS["pope"](shared / "pope")
    r = api.post("/api/benchmarks", json={"name": "pope", "path": str(shared / "pope")})
    assert r.status_code == 201 and r.json()["samples"] == 6, r.text
    assert api.get("/api/benchmarks/pope").json()["metrics"] == ["pope"]
    assert api.post("/api/benchmarks", json={"name": "pope", "path": str(shared / "pope")}).status_code == 409
    assert api.post("/api/benchmarks", json={"name": "nope", "path": str(shared)}).status_code == 422
