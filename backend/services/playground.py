"""The playground: chat with a registered model, or with what a training job saved, using
the training template and tiling.

Generation runs in the API process: the model is loaded lazily on the first request and
kept (a small LRU), so the API imports torch only on this path. That keeps token streaming
a plain HTTP response with no broker round trip per token; the cost is that the API host
needs the memory for the models being chatted with (see docs/evaluation.md).
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from sqlalchemy.orm import Session

from backend.db.models import User
from backend.services.errors import InvalidInput
from backend.services.evaluations import model_location, resolve_model_ref, training_tiling
from backend.settings import Settings

MAX_LOADED = 2
_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()


def decode_image(data: str) -> Image.Image:
    """A base64 image (optionally a ``data:image/...;base64,`` URL) -> RGB PIL image."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"image: not valid base64 ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidInput(f"image: not a readable image ({e})") from None
    return img.convert("RGB")


def to_conversation(messages: list[dict[str, str]], has_image: bool) -> list[dict[str, str]]:
    """OpenAI-style ``[{role, content}]`` -> the seed's ``[{from, value}]``; roles must
    alternate starting with the user (an optional first system message), and end with the user."""
    problems = []
    convs: list[dict[str, str]] = []
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    for i, m in enumerate(messages):
        role = roles.get(m.get("role", ""))
        if role is None:
            problems.append({"field": f"messages.{i}.role", "message": f"unknown role {m.get('role')!r}"})
            continue
        if role == "system" and i != 0:
            problems.append({"field": f"messages.{i}.role", "message": "a system message must come first"})
        convs.append({"from": role, "value": m.get("content", "")})
    turns = [c for c in convs if c["from"] != "system"]
    for i, c in enumerate(turns):
        if c["from"] != ("human" if i % 2 == 0 else "gpt"):
            problems.append({"field": "messages", "message": "user and assistant turns must alternate, user first"})
            break
    if not turns or turns[-1]["from"] != "human":
        problems.append({"field": "messages", "message": "the last message must be from the user"})
    if not has_image and any("<image>" in c["value"] for c in convs):
        problems.append({"field": "messages", "message": "<image> in a message but no image was sent"})
    if problems:
        raise InvalidInput("invalid chat request", problems)
    return convs


def get_generator(path: Path, template: str, tiling: dict[str, Any] | None = None) -> Any:
    """The loaded model for ``path`` (loaded on first use; the least recently used is dropped),
    tiling as it was trained when ``tiling`` (a job's hyperparameters) is given."""
    from worker.evaluation.generation import Generator
    from worker.evaluation.run import trained_tiling

    key = (str(path), template)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        gen = Generator(path, template=template)
        gen.tiling = trained_tiling(gen.tiling, tiling, None)
        _cache[key] = gen
        while len(_cache) > MAX_LOADED:
            _cache.popitem(last=False)
        return gen


def prepare_chat(session: Session, settings: Settings, user: User | None, model_id: int, *,
                 messages: list[dict[str, str]], image: str | None, job_id: int | None,
                 checkpoint: str | None) -> tuple[Any, Any]:
    """Validate the request and load the model: (generator, prompt)."""
    ref = resolve_model_ref(session, {"job_id": job_id, "checkpoint": checkpoint} if job_id is not None
                            else {"model_id": model_id}, user)
    if job_id is not None and ref["model_id"] != model_id:
        raise InvalidInput(f"job {job_id} fine-tuned model {ref['model_id']}, not model {model_id}")
    images = [decode_image(image)] if image else []
    convs = to_conversation(messages, bool(images))
    path, template, builtin = model_location(session, ref)
    if builtin and not (path / "config.json").exists():
        from worker.demo_model import ensure_demo_model

        path = ensure_demo_model(settings.data_path / "models")
    if not (path / "config.json").exists():
        raise InvalidInput(f"{ref['label']}: no model files at {path}")
    gen = get_generator(path, template, training_tiling(session, ref))
    try:
        prompt = gen.prompt(convs, images)
    except ValueError as e:
        raise InvalidInput(f"cannot build the prompt: {e}") from None
    return gen, prompt


def stream_reply(gen: Any, prompt: Any, max_new_tokens: int, temperature: float) -> Iterator[str]:
    yield from gen.stream(prompt, max_new_tokens=max_new_tokens, temperature=temperature)


def reply(gen: Any, prompt: Any, max_new_tokens: int, temperature: float) -> str:
    return gen.generate([prompt], max_new_tokens=max_new_tokens, temperature=temperature)[0]
