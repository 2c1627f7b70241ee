"""The compact, cached training-data index (issue 21): the same samples, lengths, drops, order
and packs as indexing every record in memory (the index before it, written out below as the
reference), a cache entry per file content and setting that a changed file invalidates and an
unchanged one reuses without tokenizing, one build when several processes need it at once, and
a dataset that holds a few integers per sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.core.data_index import DROP_REASONS, IndexCancelled, file_lines, scan_lines
from backend.core.meta import load_meta, locate_entry, meta_base, subsample_indices
from backend.core.samples import (
    IGNORE_INDEX,
    SampleError,
    count_samples,
    image_paths,
    tokenize_sample,
)
from backend.core.templates import TemplateError, get_template
from backend.core.tiling import max_patches_per_image, plan_tiles
from worker.training.data import SupervisedDataset
from worker.training.packing import plan_packs

REPO = Path(__file__).resolve().parents[2]


def conv(*turns: str) -> list[dict]:
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(turns)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from worker.demo_model import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def write_mixture(root: Path) -> Path:
    """Two datasets with every kind of drop, repeat_time 2 and 0.5, a dataset's own tile budget,
    blank lines, a byte-order mark, CRLF line ends and a last line without a newline."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name, (w, h) in {"wide.png": (1344, 448), "square.png": (448, 448), "tall.png": (448, 1344)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    plain = [
        {"id": "single", "image": "wide.png", "conversations": conv("What is it?", "Noise.")},
        {"id": "multi", "image": ["wide.png", "tall.png"], "conversations": conv("<image> and <image>: same?", "No.")},
        {"id": "text", "conversations": conv("Say hi.", "Hi.", "Again?", "Hi again.")},
        {"id": "too-long-image", "image": "wide.png", "conversations": conv("x " * 1000 + "<image>", "x")},
        {"id": "cut-answer", "conversations": conv("y " * 4000, "Lost.")},
        {"id": "bad-tags", "image": ["wide.png", "tall.png"], "conversations": conv("<image> one tag", "x")},
        {"id": "missing", "image": "nope.png", "conversations": conv("?", "x")},
        {"conversations": conv("no id and a bad role",) + [{"from": "human", "value": "again"}]},
        {"id": "long-answer", "conversations": conv("Go.", "z " * 3000)},
        {"id": "square", "image": "square.png", "conversations": conv("<image>\nColour?", "Grey.", "Sure?", "Yes.")},
    ]
    lines = [json.dumps(r) for r in plain]
    lines.insert(3, "")
    lines.insert(6, "   \t")
    (root / "plain.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())  # no final newline
    aug = [{"id": f"a{i}", "image": "tall.png", "conversations": conv(f"Q{i}?", f"A{i}." * (i + 1))}
           for i in range(6)]
    (root / "aug.jsonl").write_text("".join(json.dumps(r) + "\n" for r in aug) + "\n")
    meta = {"plain": {"root": str(root), "annotation": str(root / "plain.jsonl"), "repeat_time": 2, "length": 8},
            "aug": {"root": str(root), "annotation": str(root / "aug.jsonl"), "data_augment": True,
                    "repeat_time": 0.5, "length": 6, "max_dynamic_patch": 1}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


def reference_index(meta_path: Path, tokenizer, template, *, max_seq_length: int, max_dynamic_patch: int) -> dict:
    """The index as it was built before the compact one: every record read into memory, then
    tiled and tokenized one by one with :func:`tokenize_sample`."""
    samples, dropped, examples, lengths = [], Counter({r: 0 for r in DROP_REASONS}), [], {}
    items = []
    for name, entry in load_meta(meta_path).items():
        root, ann = locate_entry(name, entry, meta_base(meta_path))
        with open(ann, encoding="utf-8-sig") as f:
            records = [json.loads(line) for line in f if line.strip()]
        order = subsample_indices(len(records), entry.repeat_time)
        lengths[name] = len(order)
        items += [(name, Path(root), records[i], entry.max_dynamic_patch or max_dynamic_patch) for i in order]
    for i, (name, root, rec, mdp) in enumerate(items):
        def drop(reason, why, i=i, name=name, rec=rec):
            dropped[reason] += 1
            if len(examples) < 10:
                examples.append(f"{name} sample {rec.get('id', i)!r}: {why}")
        try:
            paths = image_paths(rec)
            tiles = []
            for rel in paths:
                with Image.open(root / rel) as im:
                    w, h = im.size
                tiles.append(plan_tiles(w, h, max_num=max_patches_per_image(mdp, len(paths))).num_tiles)
        except (OSError, ValueError) as e:
            drop("unreadable_image", f"{type(e).__name__}: {e}")
            continue
        try:
            s = tokenize_sample(rec, template, tokenizer, tiles)
        except (SampleError, TemplateError, KeyError, TypeError) as e:
            drop("invalid", f"{type(e).__name__}: {e}")
            continue
        why = f"{s.total_tokens} tokens, max_seq_length {max_seq_length}"
        if any(end > max_seq_length for _, end in s.image_spans):
            drop("truncated_image", why)
        elif all(x == IGNORE_INDEX for x in s.labels[:max_seq_length]):
            drop("empty_labels", why)
        else:
            samples.append({"dataset": name, "record": rec, "tiles": tiles, "item": i,
                            "length": min(s.total_tokens, max_seq_length)})
    return {"samples": samples, "dropped": dropped, "examples": examples, "lengths": lengths}


@pytest.mark.parametrize("template, workers", [("internlm2-chat", 1), ("internvl2_5", 1), ("internlm2-chat", 2)])
def test_compact_index_equals_the_in_memory_index(tmp_path, tokenizer, template, workers, monkeypatch):
    """In one process, and built by a pool of 2 worker processes over pieces of 3 lines (merged in
    file order: the same arrays and the same first drops)."""
    from backend.core import data_index

    monkeypatch.setenv(data_index.WORKERS_ENV, str(workers))
    monkeypatch.setattr(data_index, "PIECE", 3)
    meta = write_mixture(tmp_path / "data")
    tpl = get_template(template)
    ref = reference_index(meta, tokenizer, tpl, max_seq_length=1800, max_dynamic_patch=4)
    ds = SupervisedDataset(meta, tokenizer, tpl, max_seq_length=1800, max_dynamic_patch=4, seed=7,
                           cache_dir=tmp_path / "cache")
    assert [r["workers"] for r in ds.index_report] == [workers, workers]
    assert set(ref["dropped"].values()) != {0} and len(ref["samples"]) > 5  # the mixture exercises it
    assert ds.lengths == ref["lengths"]
    assert [ds.record(k) for k in range(len(ds))] == [s["record"] for s in ref["samples"]]
    assert [ds.dataset_of(k) for k in range(len(ds))] == [s["dataset"] for s in ref["samples"]]
    assert ds.modality_lengths.tolist() == [s["length"] for s in ref["samples"]]
    assert ds.tile_counts.tolist() == [sum(s["tiles"]) for s in ref["samples"]]
    assert ds._item.tolist() == [s["item"] for s in ref["samples"]]  # the per-sample JPEG RNG
    assert dict(ds.dropped) == dict(ref["dropped"])
    assert ds.drop_examples == ref["examples"]
    for k, s in enumerate(ref["samples"]):
        assert len(ds[k]["input_ids"]) == s["length"]
    args = dict(max_seq_length=1800, max_tiles=6, seed=3)
    assert plan_packs(ds.modality_lengths, ds.tile_counts, **args).packs == plan_packs(
        [s["length"] for s in ref["samples"]], [sum(s["tiles"]) for s in ref["samples"]], **args).packs
    # from the cache: the same again
    again = SupervisedDataset(meta, tokenizer, tpl, max_seq_length=1800, max_dynamic_patch=4, seed=7,
                              cache_dir=tmp_path / "cache")
    assert again.tokenized == 0 and all(r["reused"] for r in again.index_report)
    assert again.modality_lengths.tolist() == ds.modality_lengths.tolist()
    assert again.drop_examples == ds.drop_examples and again.per_dataset() == ds.per_dataset()


@pytest.mark.parametrize("family, template", [("phi3", "phi3-chat"), ("internlm2", "internlm2-chat"),
                                              ("internlm2", "internvl2_5"), ("qwen2", "Hermes-2")])
def test_batched_counts_equal_tokenize_sample_with_real_family_tokenizers(tmp_path, family, template):
    from convert_helpers import write_original
    from transformers import AutoTokenizer

    from worker.convert import import_checkpoint

    write_original(tmp_path / "src", family)
    import_checkpoint(tmp_path / "src", tmp_path / "native")
    tok = AutoTokenizer.from_pretrained(tmp_path / "native")
    tpl = get_template(template)
    records = [
        ({"image": ["a", "b"], "conversations": conv("<image>\nFirst, then <image>\twhat  differs? 123",
                                                      "The second one is 2x larger.", "And the colour?", "Red.")}, [1, 2]),
        ({"conversations": conv("  spaces  ", " ", "x", "y z")}, []),
        ({"image": "a", "conversations": conv("Describe.", "A long caption " * 30)}, [3]),
        ({"conversations": [{"from": "system", "value": "Be brief."}, *conv("Hi", "Hello!")]}, []),
        ({"image": "a", "conversations": conv("<image> <image>", "x")}, [1]),  # invalid: two tags
    ]
    got = count_samples(records, tpl, tok, tokens_per_tile=3, limit=40)
    for (rec, tiles), c in zip(records, got, strict=True):
        try:
            s = tokenize_sample(rec, tpl, tok, tiles, tokens_per_tile=3)
        except SampleError as e:
            assert isinstance(c, SampleError) and str(c) == str(e)
            continue
        assert (c.total_tokens, c.image_tokens, c.image_spans, c.trained_tokens) == (
            s.total_tokens, s.image_tokens, s.image_spans, s.trained_tokens)
        assert c.trained_in_limit == sum(1 for x in s.labels[:40] if x != IGNORE_INDEX)


class CountingTokenizer:
    """Counts the records the index tokenizes (batched calls with a list of texts)."""

    def __init__(self, tok) -> None:
        self.tok, self.texts = tok, 0

    def __call__(self, text, **kw):
        if isinstance(text, list):
            self.texts += len(text)
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_changed_file_is_reindexed_and_an_unchanged_one_is_reused_without_tokenizing(tmp_path, tokenizer):
    meta = write_mixture(tmp_path / "data")
    tpl, cache = get_template("internlm2-chat"), tmp_path / "cache"
    counting = CountingTokenizer(tokenizer)

    def load():
        return SupervisedDataset(meta, counting, tpl, max_seq_length=1800, max_dynamic_patch=4, cache_dir=cache)

    first = load()
    assert counting.texts > 0 and first.tokenized == 9 + 6  # every line but the one whose image is missing
    counting.texts = 0
    second = load()
    assert counting.texts == 0 and second.tokenized == 0
    assert [r["key"] for r in second.index_report] == [r["key"] for r in first.index_report]
    with open(tmp_path / "data" / "aug.jsonl", "a") as f:  # the file changes: its entry no longer applies
        f.write(json.dumps({"id": "new", "conversations": conv("New?", "Yes.")}) + "\n")
    third = load()
    keys = {r["dataset"]: r for r in third.index_report}
    assert keys["plain"]["reused"] and keys["plain"]["key"] == first.index_report[0]["key"]
    assert not keys["aug"]["reused"] and keys["aug"]["key"] != first.index_report[1]["key"]
    assert third.tokenized == keys["aug"]["rows"] == 7 and third.lengths["aug"] == 3
    # another setting (max_seq_length) is another entry; the key names what it is made of
    other = SupervisedDataset(meta, counting, tpl, max_seq_length=1000, max_dynamic_patch=4, cache_dir=cache)
    assert {r["key"] for r in other.index_report}.isdisjoint(r["key"] for r in third.index_report)
    parts = other.index_report[0]["parts"]
    assert parts["max_seq_length"] == 1000 and parts["template_fingerprint"] == tpl.fingerprint()
    assert {"sha256", "tokenizer", "root", "max_dynamic_patch", "tokens_per_tile"} <= set(parts)


def test_scan_lines_finds_every_line_and_the_blank_ones(tmp_path):
    data = b"\xef\xbb\xbf{}\r\n\n  \t\n{\"a\": 1}\n\n{}"
    (tmp_path / "f.jsonl").write_bytes(data)
    sha, starts, nonblank = scan_lines(tmp_path / "f.jsonl")
    assert starts.tolist() == [3, 7, 8, 12, 21, 22] and nonblank.tolist() == [True, False, False, True, False, True]
    import hashlib

    assert sha == hashlib.sha256(data).hexdigest()
    # over several read blocks (4 MiB), lines running over a block's end included
    big = b"".join(b"%d\n" % i + b" " * (i % 3) + b"\n" for i in range(1_000_000))
    (tmp_path / "big.jsonl").write_bytes(big)
    _, starts, nonblank = scan_lines(tmp_path / "big.jsonl")
    assert len(big) > 2 * (1 << 22)
    expected = []
    pos = 0
    for line in big.split(b"\n"):
        expected.append((pos, bool(line.strip())))
        pos += len(line) + 1
    if big.endswith(b"\n"):
        expected.pop()
    assert list(zip(starts.tolist(), nonblank.tolist(), strict=True)) == expected
    lines = file_lines(tmp_path / "big.jsonl", tmp_path / "cache")
    again = file_lines(tmp_path / "big.jsonl", tmp_path / "cache")
    assert isinstance(again.starts, np.memmap) and again.sha256 == lines.sha256


BUILD = """
import json, sys, time
from pathlib import Path
from backend.core import data_index
from backend.core.templates import get_template
from transformers import AutoTokenizer
from worker.training.data import SupervisedDataset
data_index.BATCH = 1
slow = lambda: time.sleep(0.05) or False  # each batch of one line waits: the builds overlap
ds = SupervisedDataset(Path(sys.argv[1]), AutoTokenizer.from_pretrained(sys.argv[2]), get_template("internlm2-chat"),
                       max_seq_length=1800, max_dynamic_patch=4, cache_dir=Path(sys.argv[3]), cancel=slow,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
print(json.dumps({"tokenized": ds.tokenized, "report": ds.index_report}))
"""


def test_two_processes_that_need_the_same_index_build_it_once(tmp_path, tokenizer):
    meta = write_mixture(tmp_path / "data")
    tokenizer.save_pretrained(tmp_path / "tok")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(meta), str(tmp_path / "tok"), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    # each file's index built by exactly one of them (which one builds which file is a race)
    assert sum(r["tokenized"] for r in results) == 9 + 6
    for k in range(2):
        assert sorted(r["report"][k]["reused"] for r in results) == [False, True]
        assert results[0]["report"][k]["key"] == results[1]["report"][k]["key"]
    assert any(x["waited_seconds"] > 0 for r in results for x in r["report"] if x["reused"])
    assert "waiting for process" in "".join(e for _, e in outs)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == sorted(
        [*(x["key"] for x in results[0]["report"]), "files", "lines"])  # two entries, no temporary left


def test_cancel_stops_the_build_and_leaves_no_entry(tmp_path, tokenizer):
    """Cancelled in the second file: the first file's entry is complete and kept, nothing of the
    second is left (no entry, no temporary folder), and the next start builds only the second."""
    meta = write_mixture(tmp_path / "data")
    calls = []
    args = dict(max_seq_length=1800, max_dynamic_patch=4, cache_dir=tmp_path / "cache")
    with pytest.raises(IndexCancelled, match="aug"):
        SupervisedDataset(meta, tokenizer, get_template("internlm2-chat"), **args,
                          cancel=lambda: calls.append(1) or len(calls) > 1)
    left = [p.name for p in (tmp_path / "cache").iterdir() if p.name not in ("files", "lines", "lines.lock")
            and not p.name.endswith(".lock")]
    ds = SupervisedDataset(meta, tokenizer, get_template("internlm2-chat"), **args)
    assert left == [ds.index_report[0]["key"]] and [r["reused"] for r in ds.index_report] == [True, False]


MEMORY = """
import json, sys, tracemalloc
from pathlib import Path
from backend.core.templates import Template
from transformers import AutoTokenizer
from worker.training.data import SupervisedDataset
tok = AutoTokenizer.from_pretrained(sys.argv[2])
# a template without a system message: the build (not measured) tokenizes 15 tokens a line, not 200
plain = Template(name="plain", system_template="{system_message}", user_role="U: ", assistant_role="A: ", sep="\\n",
                 bos=None, system_message="")
args = dict(max_seq_length=512, max_dynamic_patch=4, cache_dir=Path(sys.argv[3]))
SupervisedDataset(Path(sys.argv[1]), tok, plain, **args)  # builds the cache
tracemalloc.start()
ds = SupervisedDataset(Path(sys.argv[1]), tok, plain, **args)
held, _ = tracemalloc.get_traced_memory()
for k in range(0, len(ds), 7):  # records read through the epoch keep nothing
    ds.record(k)
after, peak = tracemalloc.get_traced_memory()
print(json.dumps({"samples": len(ds), "held": held, "after": after, "peak": peak}))
"""


def test_dataset_memory_of_a_rank_on_a_200k_line_file_is_a_few_bytes_per_sample(tmp_path, tokenizer):
    """What the dataset allocates on a rank (Python and numpy, traced) once its index is cached:
    before the compact index, every record was a dict (about 3 KB a line, 600 MB here)."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "big.jsonl", "w") as f:
        for i in range(200_000):
            f.write(json.dumps({"id": i, "conversations": conv(f"Question {i}?", "Short answer.")}) + "\n")
    (data / "meta.json").write_text(json.dumps({"big": {"root": str(data), "annotation": str(data / "big.jsonl"),
                                                        "repeat_time": 1, "length": 200_000}}))
    tokenizer.save_pretrained(tmp_path / "tok")
    out = subprocess.run([sys.executable, "-c", MEMORY, str(data / "meta.json"), str(tmp_path / "tok"),
                          str(tmp_path / "cache")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["samples"] == 200_000, m
    assert m["held"] < 12 * 2**20, m  # about 60 bytes a sample (arrays of the kept samples), not 3 KB
    assert m["after"] - m["held"] < 2**20 and m["peak"] < 40 * 2**20, m


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    from worker.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


def test_sigterm_while_indexing_stops_the_run_within_seconds(tmp_path, demo_model):
    """The worker's cancel (SIGTERM to the run's trainers) while rank 0 or 1 builds the index
    and the other waits for it: both stop between two batches, the run ends stopped at step 0 with
    a clean last line within 5 s, and no process of it is left."""
    text = stop_run_in_phase(tmp_path, demo_model, 30_000, "indexing tiny:")
    assert "phase: indexing tiny: " in text  # the Jobs page shows it as the run's phase
    last = [x for x in text.splitlines() if x.strip()][-1]
    assert last.startswith("stopped on request before training (cancelled while"), text[-3000:]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name not in ("files", "lines")
                and not p.name.endswith(".lock")], "a partial index entry was left"


def test_sigterm_while_the_model_loads_stops_the_run_within_seconds(tmp_path, demo_model):
    """The same cancel once the data is ready, while the model loads (or the rendezvous and
    DeepSpeed's init run): before, the trainers saw it only at the end of step 1."""
    text = stop_run_in_phase(tmp_path, demo_model, 40, "phase: loading the model")
    last = [x for x in text.splitlines() if x.strip()][-1]
    assert last.startswith("stopped on request before training (cancelled during "), text[-3000:]
    assert "step 1/" not in text, text[-3000:]


def stop_run_in_phase(tmp_path: Path, demo_model: Path, lines: int, mark: str) -> str:
    """A 2-rank torchrun of the trainer on ``lines`` lines, SIGTERM to its trainers (what the
    worker's cancel does, worker.local) as soon as ``mark`` is in its log; checks that it ended
    stopped at step 0 within 5 s, without a traceback and with no process left; its log."""
    import signal
    import time

    from backend.core.spec import Hyperparameters, TrainingSpec
    from worker import processes

    data = tmp_path / "data"
    data.mkdir()
    words = "a long answer about the chart and the values of its bars over the years".split()
    with open(data / "ann.jsonl", "w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": i, "conversations": conv(f"Question {i}?", " ".join(words * 12))}) + "\n")
    (data / "meta.json").write_text(json.dumps({"tiny": {"root": str(data), "annotation": str(data / "ann.jsonl"),
                                                         "repeat_time": 1, "length": lines}}))
    run = tmp_path / "run"
    run.mkdir()
    TrainingSpec(job_id=1, model_path=str(demo_model), template="internlm2-chat", meta_path=str(data / "meta.json"),
                 output_dir=str(run), hyper=Hyperparameters(nproc_per_node=2, max_steps=1)).write(run / "spec.json")
    log_path = run / "training_log.txt"
    from backend.services.scheduling import free_port

    # a real port: a rank that reaches the rendezvous must find it (with port 0 it retries for 30 min)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_port",
           str(free_port(set())), "-m", "worker.training.train", "--spec", str(run / "spec.json")]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                                     "VLSTUDIO_INDEX_CACHE": str(tmp_path / "cache")})
    try:
        deadline = time.monotonic() + 300
        while mark not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and mark in log_path.read_text(), log_path.read_text()[-3000:]
        t0 = time.monotonic()
        ranks = processes.trainers(processes.spec_processes(run / "spec.json"))
        assert len(ranks) == 2
        processes.send([p.pid for p in ranks], signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert proc.returncode == 0 and took < 5, (proc.returncode, took, text[-3000:])
    assert json.loads((run / "outcome.json").read_text())["outcome"] == "stopped"
    assert "Traceback" not in text, text[-3000:]
    time.sleep(0.5)
    assert processes.spec_processes(run / "spec.json") == []
    return text
