"""The playground: chat with a registered model, or with what a training job saved, using
the training template and tiling.

The API only validates a chat and resolves what to load; generation runs on a worker's model
server (:mod:`worker.serving`, GPU-leased, models kept loaded, chats batched), which streams
the reply back through the database and the live path (:mod:`backend.services.chat`). The API
loads no model and imports no torch (see docs/evaluation.md).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from sqlalchemy.orm import Session

from backend.core.chat_prompt import chat_problems, context_length
from backend.core.images import DEFAULT_MAX_PIXELS
from backend.core.model_card import layered_tiling, read_card
from backend.core.model_folder import ModelFolderError, load_tokenizer
from backend.db.models import User
from backend.services.errors import InvalidInput
from backend.services.evaluations import model_location, resolve_model_ref, training_tiling
from backend.settings import Settings


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


def prepare_chat(session: Session, settings: Settings, user: User | None, model_id: int, *,
                 messages: list[dict[str, str]], image: str | None, job_id: int | None,
                 checkpoint: str | None, max_new_tokens: int = 256) -> dict[str, Any]:
    """Validate the request and resolve the model: the fields of a chat request for the
    workers (:func:`backend.services.chat.submit`). A chat that does not fit the model's
    context with ``max_new_tokens`` more, or an image over the pixel limit, is refused here
    (:func:`backend.core.chat_prompt.chat_problems`): no worker ever gets it."""
    ref = resolve_model_ref(session, {"job_id": job_id, "checkpoint": checkpoint} if job_id is not None
                            else {"model_id": model_id}, user)
    if job_id is not None and ref["model_id"] != model_id:
        raise InvalidInput(f"job {job_id} fine-tuned model {ref['model_id']}, not model {model_id}")
    size = image_size(image) if image else None  # a bad image is the client's error, said before any work is queued
    convs = to_conversation(messages, bool(image))
    path, template, builtin = model_location(session, ref)
    if not builtin and not (path / "config.json").exists():
        raise InvalidInput(f"{ref['label']}: no model files at {path}")
    tiling = training_tiling(session, ref)
    problems = chat_limits(path, template, tiling, convs, [size] if size else [], max_new_tokens)
    if problems:
        raise InvalidInput(f"{ref['label']}: {problems[0]['message']}", problems)
    if image:
        decode_image(image)
    return {"model_path": str(path), "builtin": builtin, "template": template,
            "tiling": tiling, "conversation": convs, "image": image}


def image_size(data: str) -> tuple[int, int]:
    """(width, height) from the image's header, before anything is decoded."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        with warnings.catch_warnings():  # the pixel limit is ours to say (chat_problems), by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:
                return img.size
    except Image.DecompressionBombError as e:  # over twice PIL's threshold: refused before our check
        raise InvalidInput(f"image: {e}; the limit is {DEFAULT_MAX_PIXELS:,} pixels") from None
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"image: not valid base64 ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidInput(f"image: not a readable image ({e})") from None


@lru_cache(maxsize=8)
def _tokenizer(path: str, stamp: float) -> Any:  # noqa: ARG001 (the file's mtime: a rewritten tokenizer is reloaded)
    return load_tokenizer(Path(path))


def chat_limits(path: Path, template: str, trained_tiling: dict | None, convs: list[dict],
                sizes: list[tuple[int, int]], max_new_tokens: int) -> list[dict[str, str]]:
    """The chat against the model's context and tiling (the worker's own prompt, counted here).
    A built-in model whose folder the worker has not built yet is checked for its image only;
    the model server checks the prompt it builds against the same limit."""
    tok_file = path / "tokenizer.json"
    if not (path / "config.json").is_file() or not tok_file.is_file():
        return chat_problems(convs, sizes, template=None, tokenizer=None, tiling=None, image_size=0,
                             tokens_per_tile=0, context=None, max_new_tokens=max_new_tokens)
    try:
        card = read_card(path)
        tokenizer = _tokenizer(str(tok_file.parent), tok_file.stat().st_mtime)
        conv_template = card.conversation_template(template)
    except ModelFolderError as e:
        raise InvalidInput(f"cannot read the model at {path}: {e}") from None
    tiling = layered_tiling(card, ("trained", trained_tiling))[0]
    return chat_problems(convs, sizes, template=conv_template, tokenizer=tokenizer, tiling=tiling,
                         image_size=card.image_size, tokens_per_tile=card.tokens_per_tile,
                         context=context_length(card.config), max_new_tokens=max_new_tokens)
