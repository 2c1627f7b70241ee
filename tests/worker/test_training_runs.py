"""The training program through its real launch path (torchrun, 2 processes, DeepSpeed on CPU
with gloo) on the tiny demo model. Each launch is shared by the assertions about it:

- ZeRO-2, backbone frozen: overfits 4 samples (< 1/10 of the start loss), generation then
  reproduces the answers, the frozen ViT is bit-identical, checkpoints are rotated;
- ZeRO-1: an uninterrupted run, a run cancelled with SIGTERM (it saves a checkpoint and
  exits), and its resumption: the resumed loss curve equals the uninterrupted one;
- ZeRO-3 + LoRA on ViT and LLM, one rank holding only pure-text samples: completes, the
  adapter merges into a plain model that computes what base + adapter computes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from backend.core.spec import Hyperparameters, TrainingSpec
from backend.core.templates import get_template, render
from worker.training.data import tile_image, to_tensor

REPO = Path(__file__).resolve().parents[2]
QA = [("red.png", (448, 448), (220, 30, 30), "Name the colour of this square.", "red"),
      ("blue.png", (448, 448), (30, 60, 220), "Which colour fills the picture?", "blue"),
      ("green.png", (448, 448), (30, 170, 60), "Tell me the colour you see.", "green"),
      ("wide.png", (900, 448), (235, 200, 20), "What is drawn here?", "a yellow square")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_data(root: Path, with_text: int = 0) -> Path:
    """The four QA samples (plus ``with_text`` pure-text samples) and their meta file."""
    root.mkdir(parents=True, exist_ok=True)
    recs = []
    for i, (name, size, rgb, q, a) in enumerate(QA):
        Image.new("RGB", size, rgb).save(root / name)
        recs.append({"id": i, "image": name, "conversations": [{"from": "human", "value": q},
                                                               {"from": "gpt", "value": a}]})
    for i in range(with_text):
        recs.append({"id": f"t{i}", "conversations": [{"from": "human", "value": f"Count to {i}."},
                                                      {"from": "gpt", "value": " ".join(map(str, range(i + 1)))}]})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = {"tiny": {"root": str(root), "annotation": str(root / "ann.jsonl"), "repeat_time": 1, "length": len(recs)}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


def write_spec(run: Path, model: Path, meta: Path, template: str = "internlm2-chat", resume: str | None = None,
               **hyper) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    h = Hyperparameters(**{"nproc_per_node": 2, "per_device_batch_size": 2, "max_dynamic_patch": 2,
                           "max_seq_length": 2048, "warmup_ratio": 0.0, "learning_rate": 1e-3, **hyper})
    spec = TrainingSpec(job_id=1, model_path=str(model), template=template, meta_path=str(meta),
                        output_dir=str(run), hyper=h, resume_from_checkpoint=resume)
    spec.write(run / "spec.json")
    return run / "spec.json"


def start(spec: Path, nproc: int = 2) -> subprocess.Popen:
    """As the worker launches it: torchrun in its own process session, output to the run's log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "worker.training.train",
           "--spec", str(spec)]
    log = open(spec.parent / "training_log.txt", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})


def run(spec: Path, timeout: float = 300, nproc: int = 2) -> tuple[int, str]:
    proc = start(spec, nproc)
    rc = proc.wait(timeout=timeout)
    return rc, (spec.parent / "training_log.txt").read_text()


def metrics(run_dir: Path) -> list[dict]:
    """The per-step rows of metrics.jsonl (the trainer's one ``{"kind": "data"}`` row, what each
    dataset contributed, is not a step)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") != "data"]


def repeated_lines(log: str) -> list[str]:
    """Lines the job log holds more than once: a warning that every rank prints, or one rank
    repeating a warning at every step (blank lines, torchrun's banner of stars, progress bars,
    which rank 0 draws for each save, and the indented source line under a warning, which two
    warnings raised through one wrapper share, aside)."""
    from collections import Counter

    lines = [line for line in log.splitlines()
             if line.strip("* ") and "it/s]" not in line and not line.startswith(" ")]
    return [line for line, n in Counter(lines).items() if n > 1]


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    from worker.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


# ------------------------------------------------------------------------ template refused
def test_template_that_does_not_fit_the_model_is_refused_before_training(demo_model, tmp_path):
    spec = write_spec(tmp_path / "run", demo_model, write_data(tmp_path / "data"), template="phi3-chat",
                      nproc_per_node=1, max_steps=2)
    out = subprocess.run([sys.executable, "-m", "worker.training.train", "--spec", str(spec)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cannot train" in out.stdout and "declares 'internlm2-chat'" in out.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------ ZeRO-2: overfit
@pytest.fixture(scope="module")
def overfit(demo_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("overfit")
    spec = write_spec(root / "run", demo_model, write_data(root / "data"), zero_stage=2, max_steps=30,
                      learning_rate=3e-3, freeze_backbone=True, save_steps=10, save_total_limit=2)
    rc, log = run(spec)
    assert rc == 0, log[-4000:]
    return root, log


@pytest.mark.slow
def test_overfit_loss_falls_below_a_tenth(overfit):
    rows = metrics(overfit[0] / "run")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] < rows[0]["loss"] / 10, [r["loss"] for r in rows]
    for key in ("grad_norm", "learning_rate", "epoch", "samples_per_second", "tokens_per_second", "eta_seconds",
                "tiles_per_batch", "padding_ratio", "dropped_samples", "dropped", "total_steps"):
        assert key in rows[0], key
    # 2 ranks x 2 samples per step; the 900x448 image is 2 tiles + thumbnail, the others 1
    assert rows[0]["tiles_per_batch"] == pytest.approx((1 + 1 + 1 + 3) / 2)
    assert rows[0]["dropped_samples"] == 0 and rows[0]["padding_ratio"] > 0


@pytest.mark.slow
def test_training_log_states_the_setup(overfit):
    log = overfit[1]
    assert "dataset tiny: 4 samples" in log
    assert "448 px tiles, 256 image tokens per tile" in log and "max_dynamic_patch=2" in log
    assert "samples: 4 kept, 0 dropped" in log
    phases = [line for line in log.splitlines() if line.startswith("phase: ")]  # every wait explained
    assert phases == ["phase: preparing data (reading, checking and tokenizing the annotations)",
                      "phase: loading the model", "phase: starting training: the first step"], phases
    assert "optimizer: torch.optim.AdamW (fused)" in log  # torch's, not DeepSpeed's compiled FusedAdam
    assert "image tokens: 1,544 in 4 images (6 tiles)" in log
    assert "trainable" in log and "vision 0/" in log  # frozen backbone: nothing of it trains
    steps = [line for line in log.splitlines() if line.startswith("step 30/30 | loss ")]
    assert len(steps) == 1, steps  # one line per step
    assert "{'loss'" not in log and "{'train_runtime'" not in log  # no raw Trainer dict beside it
    assert not repeated_lines(log)  # warnings and progress bars once (rank 0), not once per rank


@pytest.mark.slow
def test_generation_reproduces_the_trained_answers(overfit):
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    root = overfit[0]
    final = root / "run" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    model = InternVLForConditionalGeneration.from_pretrained(final).eval()
    assert model.config.template == "internlm2-chat" and tok.chat_template
    for name, _, _, question, answer in QA:
        tiles = tile_image(Image.open(root / "data" / name).convert("RGB"), max_num=2)
        text = render([{"from": "human", "value": "<image>\n" + question}], get_template("internlm2-chat"),
                      add_generation_prompt=True).text
        text = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 256 * len(tiles) + "</img>")
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        out = model.generate(**ids, pixel_values=torch.stack([to_tensor(t) for t in tiles]), max_new_tokens=8)
        assert tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == answer


@pytest.mark.slow
def test_frozen_weights_are_bit_identical_and_checkpoints_rotate(overfit, demo_model):
    base, trained = state_dict(demo_model), state_dict(overfit[0] / "run" / "final")
    vision = [k for k in base if ".vision_tower." in k]
    assert vision and all(torch.equal(base[k], trained[k]) for k in vision)
    assert not torch.equal(base["model.multi_modal_projector.linear_1.weight"],
                           trained["model.multi_modal_projector.linear_1.weight"])
    assert not torch.equal(base["lm_head.weight"], trained["lm_head.weight"])
    kept = sorted(p.name for p in (overfit[0] / "run" / "checkpoints").iterdir())
    assert kept == ["checkpoint-20", "checkpoint-30"]
    ckpt = overfit[0] / "run" / "checkpoints" / "checkpoint-20"  # usable as a model folder on its own
    assert (ckpt / "tokenizer.json").exists() and (ckpt / "model.safetensors").exists()
    assert json.loads((ckpt / "config.json").read_text())["template"] == "internlm2-chat"


# ------------------------------------------------------------------------ ZeRO-1: cancel and resume
RESUME = {"zero_stage": 1, "max_steps": 8, "drop_path_rate": 0.1, "group_by_length": True, "seed": 5}


@pytest.fixture(scope="module")
def resume_runs(demo_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    meta = write_data(root / "data", with_text=4)
    stopped_at, _, resumed_log = straight_then_cut_and_resume(root, demo_model, meta, RESUME)
    return root, stopped_at, resumed_log


def straight_then_cut_and_resume(root: Path, model: Path, meta: Path, settings: dict) -> tuple[int, str, str]:
    """A straight run in ``root/straight``; in ``root/cut`` the same run stopped by SIGTERM after
    three steps, then resumed from its latest checkpoint. Returns the step it stopped at, the
    straight run's log and the resumed run's log."""
    rc, straight_log = run(write_spec(root / "straight", model, meta, **settings))
    assert rc == 0, straight_log[-4000:]
    proc = start(write_spec(root / "cut", model, meta, **settings))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (root / "cut" / "metrics.jsonl").exists() and len(metrics(root / "cut")) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # what the worker does on cancel
    proc.wait(timeout=120)
    stopped_at = len(metrics(root / "cut"))
    rc, resumed_log = run(write_spec(root / "cut", model, meta, resume="latest", **settings))
    assert rc == 0, resumed_log[-4000:]
    return stopped_at, straight_log, resumed_log


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops(resume_runs):
    root, stopped_at, log = resume_runs
    assert 3 <= stopped_at < 8
    assert "stopped on request; checkpoint saved" in log
    assert (root / "cut" / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_loss_curve(resume_runs):
    root, stopped_at, _ = resume_runs
    straight = {r["step"]: r for r in metrics(root / "straight")}
    resumed = {r["step"]: r for r in metrics(root / "cut")}
    assert sorted(resumed) == list(range(1, 9)) and sorted(straight) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-4, abs=1e-6), step
        assert resumed[step]["learning_rate"] == pytest.approx(straight[step]["learning_rate"], rel=1e-6)
    a, b = state_dict(root / "straight" / "final"), state_dict(root / "cut" / "final")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


# ------------------------------------------------------------------------ resume from a checkpoint
# More resume settings, each two launches: a straight run that saves a checkpoint half-way, and a
# run resumed from that checkpoint into a folder of its own.
# - zero0, lora: second-stage fine-tunes (the seed's "2nd fine-tune"), whose model is another
#   run's fine-tuned output (final/, written with that run's template and tiling): zero0, one
#   process without DeepSpeed, continues the overfit run's full fine-tune (the full model read back
#   from the checkpoint's safetensors in the model's original key layout); lora, two processes,
#   trains a new adapter on the model the ZeRO-3 LoRA run merged (the adapter and the modules saved
#   beside it read back through peft);
# - zero2-packed: ZeRO-2 on a packed run, two processes (ZeRO-3 packed: test_packing_runs.py).
# The resumed steps are the same float operations in the same order on the same machine as the
# straight run's (weights, optimizer state, RNG states and the sampler's order all restored), so
# losses, gradient norms and final weights are compared for equality, not closeness.
RESUME_AT = 3
OTHER_RESUMES = {
    "zero0": {"zero_stage": 0, "nproc_per_node": 1, "max_steps": 6, "drop_path_rate": 0.1, "seed": 7,
              "freeze_backbone": True},
    "lora": {"zero_stage": 0, "nproc_per_node": 2, "max_steps": 6, "freeze_backbone": True, "freeze_llm": True, "use_llm_lora": 8,
             "use_backbone_lora": 4, "merge_lora": True,
             "drop_path_rate": 0.1, "group_by_length": True, "seed": 3},
    "zero2-packed": {"zero_stage": 2, "nproc_per_node": 2, "max_steps": 6, "packing": True, "max_seq_length": 900,
                     "max_tiles_per_pack": 3, "per_device_batch_size": 1, "drop_path_rate": 0.1, "seed": 11},
}
SECOND_STAGE = {"zero0": "overfit", "lora": "lora_run"}  # the fixture whose final/ is the model


@pytest.fixture(scope="module", params=sorted(OTHER_RESUMES))
def resumed_from_checkpoint(request, demo_model, tmp_path_factory):
    settings = OTHER_RESUMES[request.param]
    first = SECOND_STAGE.get(request.param)
    model = request.getfixturevalue(first)[0] / "run" / "final" if first else demo_model
    root = tmp_path_factory.mktemp(f"resume-{request.param}")
    meta = write_data(root / "data", with_text=4)
    rc, log = run(write_spec(root / "straight", model, meta, save_steps=RESUME_AT, **settings),
                  nproc=settings["nproc_per_node"])
    assert rc == 0, log[-4000:]
    ckpt = root / "straight" / "checkpoints" / f"checkpoint-{RESUME_AT}"
    rc, log = run(write_spec(root / "resumed", model, meta, resume=str(ckpt), save_steps=RESUME_AT, **settings),
                  nproc=settings["nproc_per_node"])
    assert rc == 0, log[-4000:]
    return root, log


@pytest.mark.slow
def test_resume_from_a_checkpoint_continues_the_same_curve(resumed_from_checkpoint):
    root, log = resumed_from_checkpoint
    assert f"resuming from {root}" in log, log[-3000:]
    straight = {r["step"]: r for r in metrics(root / "straight")}
    resumed = {r["step"]: r for r in metrics(root / "resumed")}
    assert sorted(resumed) == list(range(RESUME_AT + 1, 7)), sorted(resumed)
    for step in resumed:
        assert resumed[step]["loss"] == straight[step]["loss"], step
        assert resumed[step]["grad_norm"] == straight[step]["grad_norm"], step
    a, b = state_dict(root / "straight" / "final"), state_dict(root / "resumed" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------ ZeRO-3 + LoRA, text-only rank
@pytest.fixture(scope="module")
def lora_run(demo_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    recs_meta = write_data(root / "data", with_text=3)
    # One image sample and three text samples, all four in each step: length grouping deals the
    # (long) image sample and the shortest text to one rank and balances the other two texts onto
    # the other rank, which then holds only text at every step.
    lines = (root / "data" / "ann.jsonl").read_text().splitlines()
    (root / "data" / "ann.jsonl").write_text("\n".join(lines[:1] + lines[4:]) + "\n")
    spec = write_spec(root / "run", demo_model, recs_meta, zero_stage=3, max_steps=4, group_by_length=True,
                      freeze_backbone=True, freeze_llm=True, use_llm_lora=8, use_backbone_lora=4, merge_lora=True,
                      learning_rate=5e-3, report_to="tensorboard")
    rc, log = run(spec)
    assert rc == 0, log[-4000:]
    return root, log


@pytest.mark.slow
def test_run_with_a_text_only_rank_completes(lora_run):
    rows = metrics(lora_run[0] / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["text_only_batches"] == 1 for r in rows), rows  # one of the two ranks, every step
    assert all(r["loss"] == r["loss"] for r in rows)
    assert list((lora_run[0] / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_lora_adapter_merges_into_the_model_it_trained(lora_run, demo_model):
    from peft import PeftModel
    from transformers import InternVLForConditionalGeneration

    final = lora_run[0] / "run" / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    assert "trainable" in lora_run[1] and "llm (LoRA)" in lora_run[1]
    merged = InternVLForConditionalGeneration.from_pretrained(final).eval()
    assert merged.config.max_dynamic_patch == 2  # the run's tiling (issue 17), not the base model's 6
    with_adapter = PeftModel.from_pretrained(InternVLForConditionalGeneration.from_pretrained(demo_model),
                                             str(final / "adapter")).eval()
    base = state_dict(demo_model)
    m = merged.state_dict()
    assert not torch.equal(base["model.language_model.layers.0.self_attn.q_proj.weight"],
                           m["model.language_model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(base["model.vision_tower.encoder.layer.0.mlp.fc1.weight"],
                           m["model.vision_tower.encoder.layer.0.mlp.fc1.weight"])
    frozen = [k for k in base if ("norm" in k or "embed_tokens" in k) and "multi_modal_projector" not in k]
    assert frozen and all(torch.equal(base[k], m[k]) for k in frozen)
    ids = torch.tensor([[1, 3, 40, 50, 60, 4]])
    pixel = torch.randn(1, 3, 448, 448)
    inputs = {"input_ids": torch.cat([ids, torch.full((1, 256), merged.config.image_token_id)], 1),
              "pixel_values": pixel}
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, with_adapter(**inputs).logits, atol=1e-4)
