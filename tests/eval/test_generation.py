"""Generation uses exactly the training pipeline, batches without changing answers, and the
playground API answers what transformers' own ``generate`` answers."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

from backend.core.demo_data import generate as demo_samples
from backend.core.samples import IGNORE_INDEX, tokenize_sample
from backend.core.templates import get_template
from worker.demo_model import build_demo_model
from worker.evaluation.generation import Generator
from worker.evaluation.readable import readable_text
from worker.training.data import tile_image, to_tensor


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo", seed=3)


@pytest.fixture(scope="module")
def gen(demo_model):
    return Generator(demo_model, device="cpu")


def image_of(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_prompt_is_the_training_prefix_before_the_answer(gen):
    _, png, record = demo_samples(1, seed=5)[0]
    tiles = tile_image(image_of(png), max_num=gen.tiling.max_dynamic_patch)
    train = tokenize_sample(record, get_template("internlm2-chat"), gen.tokenizer, [len(tiles)])
    first_label = next(i for i, x in enumerate(train.labels) if x != IGNORE_INDEX)
    prompt = gen.prompt(record["conversations"][:1], [image_of(png)])
    assert prompt.input_ids == train.input_ids[:first_label]
    assert torch.equal(prompt.pixel_values, torch.stack([to_tensor(t) for t in tiles]))


def direct_generate(model_dir, png: bytes, question: str, max_new_tokens: int) -> str:
    """The reference: transformers' generate on hand-built inputs, no vlstudio generation code."""
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = InternVLForConditionalGeneration.from_pretrained(model_dir).eval()
    tiles = tile_image(image_of(png), max_num=model.config.max_dynamic_patch)
    image = "<img>" + "<IMG_CONTEXT>" * (256 * len(tiles)) + "</img>"
    text = (f"<s><|im_start|>system\n{get_template('internlm2-chat').system_message}<|im_end|>"
            f"<|im_start|>user\n{image}\n{question}<|im_end|><|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    pixel_values = torch.stack([to_tensor(t) for t in tiles])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    new = out[0, ids.shape[1]:].tolist()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    new = new[: new.index(end)] if end in new else new
    # the tokens are transformers'; their text as users read it (this untrained model emits stray
    # bytes, e.g. 0xF8, that the tokenizer's decode shows as U+FFFD: tests/eval/test_readable_text.py)
    return readable_text(tok, new).strip()


def test_generator_matches_transformers_generate(gen, demo_model):
    for _, png, record in demo_samples(2, seed=9):
        question = record["conversations"][0]["value"].removeprefix("<image>\n")
        ours = gen.generate([gen.prompt(record["conversations"][:1], [image_of(png)])], max_new_tokens=10)[0]
        assert ours == direct_generate(demo_model, png, question, 10)


def test_batched_generation_gives_the_same_answers(gen):
    samples = demo_samples(6, seed=11, kinds=("colour", "shape"))
    prompts = [gen.prompt(r["conversations"][:1], [image_of(png)]) for _, png, r in samples]
    assert len({len(p.input_ids) for p in prompts}) > 1, "left padding is not exercised"
    one_by_one = [gen.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert gen.generate(prompts, max_new_tokens=8) == one_by_one


@pytest.fixture
def model_server(api):
    """A worker's model server, in this process (a worker runs it beside its scheduler)."""
    from types import SimpleNamespace

    from worker.serving import ModelServer

    server = ModelServer(SimpleNamespace(name="test-worker", node="n", gpu_total=0, cluster=False,
                                         wake=lambda: None))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_chat_api_streams_what_transformers_generates(api, model_server, demo_model):
    """The built-in model's files are the demo model built above (same seed as the API would
    build is not needed: the API loads whatever is in its folder)."""
    import shutil

    model = api.get("/api/models").json()[0]
    from backend.settings import get_settings

    target = get_settings().data_path / "models" / model["name"]
    shutil.copytree(demo_model, target)
    _, png, record = demo_samples(1, seed=21)[0]
    question = record["conversations"][0]["value"].removeprefix("<image>\n")
    body = {"messages": [{"role": "user", "content": question}], "image": base64.b64encode(png).decode(),
            "max_new_tokens": 10}
    want = direct_generate(demo_model, png, question, 10)
    r = api.post(f"/api/models/{model['id']}/chat", json={**body, "stream": False})
    assert r.status_code == 200, r.text
    assert r.json()["reply"] == want
    with api.stream("POST", f"/api/models/{model['id']}/chat", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith(("event:", "data:"))]
    kinds = [e[7:] for e in events if e.startswith("event:")]
    data = [json.loads(e[6:]) for e in events if e.startswith("data:")]
    assert kinds[-1] == "done" and kinds.count("token") >= 1
    assert "".join(d["text"] for d in data[:-1]).strip() == data[-1]["text"] == want
    # Multi-turn: the previous reply is part of the prompt.
    r = api.post(f"/api/models/{model['id']}/chat", json={**body, "stream": False, "messages": [
        {"role": "user", "content": question}, {"role": "assistant", "content": want},
        {"role": "user", "content": "And the shape?"}]})
    assert r.status_code == 200 and isinstance(r.json()["reply"], str)


def test_a_job_is_evaluated_with_the_tiling_it_trained_with():
    from worker.evaluation.generation import Tiling
    from worker.evaluation.run import trained_tiling

    config = Tiling(max_dynamic_patch=6, use_thumbnail=True)
    assert trained_tiling(config, None, None) == config
    assert trained_tiling(config, {"max_dynamic_patch": 2, "use_thumbnail": False}, None) == Tiling(2, 1, False, True)
    assert trained_tiling(config, {"max_dynamic_patch": 2}, 12).max_dynamic_patch == 12  # the evaluation's override


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
def test_chats_that_arrive_together_are_generated_in_one_batch_with_unchanged_answers(api, model_server, demo_model):
    """The model server batches concurrent chats for one model; each answer is what that chat
    alone gets from transformers' generate, and the API process never loaded a model."""
    import shutil
    import sys
    import threading

    from backend.db.models import ChatRequest
    from backend.db.session import session_scope
    from backend.settings import get_settings

    model = api.get("/api/models").json()[0]
    shutil.copytree(demo_model, get_settings().data_path / "models" / model["name"])
    samples = demo_samples(3, seed=31, kinds=("colour", "shape"))
    bodies = [{"messages": [{"role": "user", "content": r["conversations"][0]["value"].removeprefix("<image>\n")}],
               "image": base64.b64encode(png).decode(), "max_new_tokens": 6 + i, "stream": False}
              for i, (_, png, r) in enumerate(samples)]
    model_server.stopping.set()  # hold the server while the three chats queue up
    model_server.thread.join()
    replies: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i, b=b: replies.__setitem__(
        i, api.post(f"/api/models/{model['id']}/chat", json=b).json()["reply"])) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    import time

    deadline = time.monotonic() + 30
    with session_scope() as s:
        while time.monotonic() < deadline and s.query(ChatRequest).count() < 3:
            time.sleep(0.1)
    model_server.stopping.clear()
    assert model_server.serve_once()  # one pass: all three claimed and generated together
    model_server.thread = threading.Thread(target=model_server._loop, daemon=True)  # whatever is left
    model_server.thread.start()
    for t in threads:
        t.join(60)
    for i, (_, png, r) in enumerate(samples):
        question = r["conversations"][0]["value"].removeprefix("<image>\n")
        assert replies[i] == direct_generate(demo_model, png, question, 6 + i), i
    with session_scope() as s:
        assert sorted(c.batch_size for c in s.query(ChatRequest)) == [3, 3, 3]
    assert "backend.services.playground" in sys.modules and not hasattr(
        sys.modules["backend.services.playground"], "get_generator")


def test_a_chat_is_bounded_by_the_prompt_the_worker_builds(gen, demo_model):
    """backend.core.chat_prompt counts, without torch, exactly the prompt the model server
    generates after; the context is the model's max_position_embeddings, to the token."""
    from backend.core.chat_prompt import chat_problems, context_length, prompt_ids, tile_counts
    from backend.core.model_folder import load_tokenizer

    tokenizer = load_tokenizer(demo_model)  # the API's tokenizer (tokenizers, no transformers)
    _, png, record = demo_samples(1, seed=5)[0]
    img = image_of(png)
    convs = record["conversations"][:1]
    counts = tile_counts([img.size], gen.tiling, gen.image_size)
    ids = prompt_ids(convs, counts, gen.template, tokenizer, gen.tokens_per_tile)
    assert ids == gen.prompt(convs, [img]).input_ids
    context = context_length(gen.card.config)
    assert context == 8192
    limits = dict(template=gen.template, tokenizer=tokenizer, tiling=gen.tiling, image_size=gen.image_size,
                  tokens_per_tile=gen.tokens_per_tile, context=context)
    assert chat_problems(convs, [img.size], max_new_tokens=context - len(ids), **limits) == []
    over = chat_problems(convs, [img.size], max_new_tokens=context - len(ids) + 1, **limits)
    assert over == [{"field": "messages", "message": (
        f"the conversation is {len(ids):,} tokens ({sum(counts) * 256 + 2:,} of them for the image's {sum(counts)} "
        f"tiles at max_dynamic_patch {gen.tiling.max_dynamic_patch}) and max_new_tokens asks for "
        f"{context - len(ids) + 1:,} more: 8,193 tokens, over the model's context of 8,192 tokens "
        "(max_position_embeddings); shorten the messages or lower max_new_tokens")}]


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_a_chat_over_the_models_limits_is_refused_and_the_server_answers_the_next(api, model_server, demo_model):
    """Issue 25: a 40k-token message took the chat worker down. The API refuses it (422 naming
    the context), an oversized image too (naming the pixel limit); one queued past the API is
    failed by the model server with the reason, and the server answers the next chat."""
    import shutil
    import time

    from backend.db.models import ChatRequest
    from backend.db.session import session_scope
    from backend.services import chat as chat_svc
    from backend.settings import get_settings

    model = api.get("/api/models").json()[0]
    shutil.copytree(demo_model, get_settings().data_path / "models" / model["name"])
    url = f"/api/models/{model['id']}/chat"
    long = " ".join(["red square blue circle"] * 10_000)
    r = api.post(url, json={"messages": [{"role": "user", "content": long}], "stream": False})
    assert r.status_code == 422, r.text
    assert "over the model's context of 8,192 tokens" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "messages"
    buf = io.BytesIO()
    Image.new("1", (10_000, 9_000)).save(buf, format="PNG")  # 90,000,000 pixels in a small file
    r = api.post(url, json={"messages": [{"role": "user", "content": "<image>\nWhat colour?"}],
                            "image": base64.b64encode(buf.getvalue()).decode(), "stream": False})
    assert r.status_code == 422 and "more than the limit of 89,478,485 pixels" in r.json()["detail"], r.text
    with session_scope() as s:
        assert s.query(ChatRequest).count() == 0  # nothing queued for a worker

    with session_scope() as s:  # past the API (an older API, a direct insert): the server's own check
        path = str(get_settings().data_path / "models" / model["name"])
        bad = chat_svc.submit(s, owner_id=None, model_path=path, builtin=True, template="internlm2-chat",
                              tiling=None, conversation=[{"from": "human", "value": long}], image=None,
                              max_new_tokens=8, temperature=0.0).id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope() as s:
            chat = s.get(ChatRequest, bad)
            if chat.status in chat_svc.FINISHED:
                break
        time.sleep(0.1)
    assert chat.status == "failed" and "over the model's context of 8,192 tokens" in chat.failure_reason, chat.failure_reason
    _, png, record = demo_samples(1, seed=21)[0]
    question = record["conversations"][0]["value"].removeprefix("<image>\n")
    r = api.post(url, json={"messages": [{"role": "user", "content": question}], "stream": False,
                            "image": base64.b64encode(png).decode(), "max_new_tokens": 6})
    assert r.status_code == 200 and r.json()["reply"] == direct_generate(demo_model, png, question, 6), r.text
