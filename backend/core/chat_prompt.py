"""A chat's prompt and its bounds, one truth for the API and the model server.

:func:`prompt_ids` is the token sequence a reply is generated after (the conversation rendered
with the template, each image expanded into its tiles' tokens, up to where the reply starts);
the worker's :func:`worker.evaluation.generation.build_prompt` generates after exactly these
ids. :func:`chat_problems` bounds a chat before it is queued: the prompt plus ``max_new_tokens``
must fit the model's context (``max_position_embeddings`` of its language model), and an image
may not have more pixels than PIL's decompression-bomb threshold, the limit uploads have. A chat
over either is refused with a 422 that names the limit; none reaches a worker, whose attention
over a prompt several times its context would take the memory of the whole node.

Pure Python (the tokenizer is duck-typed, see :mod:`backend.core.samples`): the API imports no torch.
"""

from __future__ import annotations

from typing import Any

from backend.core.images import DEFAULT_MAX_PIXELS
from backend.core.samples import IGNORE_INDEX, SampleError, tokenize_sample
from backend.core.templates import Template
from backend.core.tiling import max_patches_per_image, plan_tiles


def tile_counts(sizes: list[tuple[int, int]], tiling: Any, image_size: int) -> list[int]:
    """Tiles per image (``sizes``: width, height) under ``tiling``; images share its budget."""
    per_image = max_patches_per_image(tiling.max_dynamic_patch, len(sizes))
    return [plan_tiles(w, h, dynamic=tiling.dynamic_image_size, min_num=tiling.min_dynamic_patch, max_num=per_image,
                       use_thumbnail=tiling.use_thumbnail, image_size=image_size).num_tiles for w, h in sizes]


def prompt_ids(conversations: list[dict], counts: list[int], template: Template, tokenizer: Any,
               tokens_per_tile: int) -> list[int]:
    """The ids a reply to ``conversations`` (ending with a user turn) is generated after."""
    if not conversations or conversations[-1].get("from") != "human":
        raise SampleError("the conversation must end with a user turn to generate a reply")
    record: dict = {"conversations": [*conversations, {"from": "gpt", "value": ""}]}
    if counts:
        record["image"] = [f"image{i}" for i in range(len(counts))] if len(counts) > 1 else "image0"
    sample = tokenize_sample(record, template, tokenizer, counts, tokens_per_tile, with_offsets=True)
    reply_start = sample.trained_spans[-1][0]
    cut = next(i for i, (a, _) in enumerate(sample.offsets) if a >= reply_start and sample.labels[i] != IGNORE_INDEX)
    return list(sample.input_ids[:cut])


def context_length(config: dict) -> int | None:
    """The language model's context (``max_position_embeddings``); None when the config does not say."""
    for part in (config.get("text_config") or {}, config.get("llm_config") or {}, config):
        value = part.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return None


def chat_problems(conversations: list[dict], sizes: list[tuple[int, int]], *, template: Template, tokenizer: Any,
                  tiling: Any, image_size: int, tokens_per_tile: int, context: int | None,
                  max_new_tokens: int) -> list[dict[str, str]]:
    """What keeps this chat from being answered within the model's limits (empty: it fits)."""
    problems = []
    for w, h in sizes:
        if w * h > DEFAULT_MAX_PIXELS:
            problems.append({"field": "image", "message": (
                f"the image is {w} x {h} = {w * h:,} pixels, more than the limit of {DEFAULT_MAX_PIXELS:,} pixels "
                "(PIL's decompression-bomb threshold, as for uploads); send a smaller image")})
    if problems or context is None:
        return problems
    counts = tile_counts(sizes, tiling, image_size)
    n = len(prompt_ids(conversations, counts, template, tokenizer, tokens_per_tile))
    if n + max_new_tokens > context:
        images = sum(counts) * tokens_per_tile + 2 * len(counts)
        of_images = (f" ({images:,} of them for the image's {sum(counts)} tiles at max_dynamic_patch "
                     f"{tiling.max_dynamic_patch})" if counts else "")
        problems.append({"field": "messages", "message": (
            f"the conversation is {n:,} tokens{of_images} and max_new_tokens asks for {max_new_tokens:,} more: "
            f"{n + max_new_tokens:,} tokens, over the model's context of {context:,} tokens "
            "(max_position_embeddings); shorten the messages or lower max_new_tokens")})
    return problems
