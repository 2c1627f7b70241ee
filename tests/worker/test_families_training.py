"""An InternVL3.5-style ``-hf`` checkpoint (transformers-native, Qwen3, its own chat template),
imported as it is, trains through the real launch path (torchrun + DeepSpeed) with the template
``tokenizer`` and then chats through the playground's generator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_training_runs import QA, metrics, start, write_data, write_spec

from backend.core.model_card import read_card
from backend.core.templates import TOKENIZER_TEMPLATE
from worker.convert import import_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data" / "families"


@pytest.mark.slow
def test_hf_checkpoint_trains_and_chats(tmp_path):
    from worker.evaluation.generation import Generator

    src = tmp_path / "InternVL3_5-tiny-hf"
    shutil.copytree(DATA / "hf_qwen3", src)
    info = import_checkpoint(src, tmp_path / "model")
    assert info.template == TOKENIZER_TEMPLATE
    spec = write_spec(tmp_path / "run", tmp_path / "model", write_data(tmp_path / "data"), template=info.template,
                      nproc_per_node=1, per_device_batch_size=4, max_steps=25, learning_rate=1e-2,
                      zero_stage=1, max_dynamic_patch=1)
    proc = start(spec, nproc=1)
    rc, log = proc.wait(timeout=400), (spec.parent / "training_log.txt").read_text()
    assert rc == 0, log[-4000:]
    losses = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert losses[-1] < losses[0] / 2, losses  # it learns the four answers

    # the fine-tune's card says the template it trained with: the generator needs no name
    gen = Generator(tmp_path / "run" / "final")
    assert gen.template == read_card(tmp_path / "model").conversation_template() and gen.template.name == TOKENIZER_TEMPLATE
    question = QA[0][3]
    prompt = gen.prompt([{"from": "human", "value": "<image>\n" + question}], [Image.new("RGB", (64, 64))])
    text = gen.tokenizer.decode(prompt.input_ids)
    # the checkpoint's own chat template, with the image expanded into its tile tokens
    assert text.startswith("<|im_start|>user\n<img><IMG_CONTEXT>") and text.endswith(
        f"</img>\n{question}<|im_end|>\n<|im_start|>assistant\n")
    (reply,) = gen.generate([prompt], max_new_tokens=6)
    assert isinstance(reply, str) and "<|im_end|>" not in reply
