"""From one annotation record to token ids and labels: the single implementation shared by
the training data pipeline, the dataset validator and the sample preview.

Pure Python; the tokenizer is duck-typed (a Hugging Face *fast* tokenizer works):
``tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)`` must return a
mapping with ``input_ids`` and ``offset_mapping``.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Protocol

from backend.core.templates import Template, render

IMAGE_PLACEHOLDER = "<image>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IGNORE_INDEX = -100


class SampleError(ValueError):
    """A record that cannot become a training sample; the message says why."""


class Tokenizer(Protocol):
    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def convert_tokens_to_ids(self, token: str) -> int: ...


def image_paths(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        return [image]
    return list(image)


def normalise_conversations(record: dict) -> list[dict]:
    """Apply the recipe's ``<image>`` rule and return a copy of the conversation.

    Single image: if the first human turn lacks ``<image>``, ``<image>\\n`` is prepended.
    Multi-image: the number of tags must equal the number of images.
    """
    convs = [dict(t) for t in record["conversations"]]
    n_images = len(image_paths(record))
    n_tags = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
    first_human = next((t for t in convs if t.get("from") == "human"), None)
    if n_images == 1 and n_tags == 0 and first_human is not None:
        first_human["value"] = IMAGE_PLACEHOLDER + "\n" + first_human["value"]
        n_tags = 1
    if n_tags != n_images:
        raise SampleError(f"{n_tags} <image> tag(s) for {n_images} image(s)")
    for t in convs:
        if t.get("from") == "gpt" and IMAGE_PLACEHOLDER in t["value"]:
            raise SampleError("<image> tag inside an assistant reply")
    return convs


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    text_tokens: int
    image_tokens: int
    rendered: str  # with <image> placeholders, before expansion
    trained_spans: list[tuple[int, int]] = field(default_factory=list)
    #: token index ranges [start, end) of each image span (<img> ... </img> included)
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    #: per token, the character range in ``rendered`` it comes from (image tokens map to their
    #: ``<image>`` placeholder); only filled when ``with_offsets=True``
    offsets: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _encode_chunk(tokenizer: Tokenizer, text: str, start: int, span_starts: list[int],
                  span_ends: list[int], offsets: list[tuple[int, int]] | None,
                  after_image: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and their labels: a token is trained when its characters lie
    entirely inside one trained span (spans are sorted and disjoint, so the only candidate is
    the last span starting at or before the token)."""
    if not text:
        return [], []
    # Text after an image follows ``</img>`` in the model's input. Sentencepiece tokenizers
    # in non-legacy mode (Phi-3) add no word-start marker after a special token, but would
    # add one to the chunk tokenized alone: encode it behind ``</img>`` and drop that token.
    prefix = IMG_END if after_image else ""
    enc = tokenizer(prefix + text, add_special_tokens=False, return_offsets_mapping=True)
    pairs = list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
    if prefix:
        pairs = [(t, (a, b)) for t, (a, b) in pairs if b > len(prefix)]
    ids = [t for t, _ in pairs]
    labels: list[int] = []
    for tok, (a, b) in pairs:
        a, b = max(a - len(prefix), 0) + start, b - len(prefix) + start
        k = bisect_right(span_starts, a) - 1
        trained = b > a and k >= 0 and b <= span_ends[k]
        labels.append(tok if trained else IGNORE_INDEX)
        if offsets is not None:
            offsets.append((a, b))
    return ids, labels


def _untrain_last_tokens(labels: list[int]) -> None:
    """Leave the last token of every run of trained tokens (one run per reply) untrained."""
    for i, x in enumerate(labels):
        if x != IGNORE_INDEX and (i + 1 == len(labels) or labels[i + 1] == IGNORE_INDEX):
            labels[i] = IGNORE_INDEX


def tokenizer_bos(tokenizer: Tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one first by itself (its ``add_bos_token``), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def tokenize_sample(record: dict, template: Template, tokenizer: Tokenizer, tiles_per_image: list[int],
                    tokens_per_tile: int = 256, *, with_offsets: bool = False) -> TokenizedSample:
    """Render a record with ``template`` and tokenize it, expanding each ``<image>`` into
    ``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile x tiles) + ``</img>``."""
    convs = normalise_conversations(record)
    if len(tiles_per_image) != len(image_paths(record)):
        raise SampleError("tile counts do not match the images")
    rendered = render(convs, template)
    text = rendered.text
    spans = sorted(rendered.trained_spans)
    starts = [s for s, _ in spans]
    ends = [e for _, e in spans]
    offsets: list[tuple[int, int]] | None = [] if with_offsets else None
    start_id = tokenizer.convert_tokens_to_ids(IMG_START)
    end_id = tokenizer.convert_tokens_to_ids(IMG_END)
    ctx_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    ids: list[int] = []
    labels: list[int] = []
    bos = tokenizer_bos(tokenizer) if template.bos_from_tokenizer else None
    if bos is not None:
        ids, labels = [bos], [IGNORE_INDEX]
        if offsets is not None:
            offsets.append((0, 0))
    image_spans: list[tuple[int, int]] = []
    image_tokens = 0
    pos = 0
    for tiles in tiles_per_image:
        at = text.index(IMAGE_PLACEHOLDER, pos)
        chunk_ids, chunk_labels = _encode_chunk(tokenizer, text[pos:at], pos, starts, ends, offsets, pos > 0)
        ids += chunk_ids
        labels += chunk_labels
        n = tokens_per_tile * tiles
        image_spans.append((len(ids), len(ids) + n + 2))
        ids += [start_id] + [ctx_id] * n + [end_id]
        labels += [IGNORE_INDEX] * (n + 2)
        if offsets is not None:
            offsets += [(at, at + len(IMAGE_PLACEHOLDER))] * (n + 2)
        image_tokens += n + 2
        pos = at + len(IMAGE_PLACEHOLDER)
    chunk_ids, chunk_labels = _encode_chunk(tokenizer, text[pos:], pos, starts, ends, offsets, pos > 0)
    ids += chunk_ids
    labels += chunk_labels
    if template.untrained_last_token:
        _untrain_last_tokens(labels)
    return TokenizedSample(
        input_ids=ids,
        labels=labels,
        text_tokens=len(ids) - image_tokens,
        image_tokens=image_tokens,
        rendered=text,
        trained_spans=rendered.trained_spans,
        image_spans=image_spans,
        offsets=offsets or [],
    )
