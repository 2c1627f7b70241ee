"""From one annotation record to token ids and labels: the single implementation shared by
the training data pipeline, the dataset validator and the sample preview.

Pure Python; the tokenizer is duck-typed (a Hugging Face *fast* tokenizer works):
``tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)`` must return a
mapping with ``input_ids`` and ``offset_mapping``.
"""

from __future__ import annotations

import sys
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


# ------------------------------------------------------------------------- counting in batches
@dataclass
class SampleCounts:
    """What :func:`tokenize_sample` would give, counted: lengths, image spans, trained tokens."""

    total_tokens: int
    text_tokens: int
    image_tokens: int
    image_spans: list[tuple[int, int]]
    #: trained tokens of the whole sample, and of its first ``limit`` tokens (the truncated sample)
    trained_tokens: int
    trained_in_limit: int


#: errors that make a record "invalid" (not a training sample), as the trainer's index counts them
RECORD_ERRORS = (SampleError, ValueError, KeyError, TypeError, AttributeError)


def count_samples(items: list[tuple[dict, list[int]]], template: Template, tokenizer: Tokenizer,
                  tokens_per_tile: int = 256, limit: int | None = None) -> list[SampleCounts | Exception]:
    """:func:`tokenize_sample` of many ``(record, tiles per image)`` at once, reduced to its counts:
    the text chunks of every record go to the tokenizer in one batched call (a fast tokenizer
    encodes them in Rust), and the label rule runs on arrays over the whole batch. Equal to
    counting the output of :func:`tokenize_sample` record by record (tests check it); a record
    that cannot be a sample gives the exception :func:`tokenize_sample` would raise instead."""
    import numpy as np

    out: list[SampleCounts | Exception | None] = [None] * len(items)
    texts: list[str] = []
    # Every record's rendered text is placed at its own ``base`` on one axis, so the trained
    # spans of the whole batch are one sorted array: a token can only fall in its own record's.
    span_starts: list[int] = []
    span_ends: list[int] = []
    chunk_start: list[int] = []  # per queued text: its start on the axis, its prefix length
    chunk_prefix: list[int] = []
    plans: list[tuple[int, list[int], list[int]]] = []  # (item, queued text of each chunk or -1, tiles)
    base = 0
    for k, (record, tiles_per_image) in enumerate(items):
        try:
            convs = normalise_conversations(record)
            if len(tiles_per_image) != len(image_paths(record)):
                raise SampleError("tile counts do not match the images")
            rendered = render(convs, template)
        except RECORD_ERRORS as e:  # TemplateError is a ValueError
            out[k] = e
            continue
        text = rendered.text
        for a, b in sorted(rendered.trained_spans):
            span_starts.append(a + base)
            span_ends.append(b + base)
        chunks = []
        pos = 0
        for c in range(len(tiles_per_image) + 1):
            at = text.index(IMAGE_PLACEHOLDER, pos) if c < len(tiles_per_image) else len(text)
            piece = text[pos:at]
            if piece:
                prefix = IMG_END if pos > 0 else ""  # as _encode_chunk: text after an image follows </img>
                texts.append(prefix + piece)
                chunk_start.append(pos + base)
                chunk_prefix.append(len(prefix))
                chunks.append(len(texts) - 1)
            else:
                chunks.append(-1)
            pos = at + len(IMAGE_PLACEHOLDER)
        plans.append((k, chunks, list(tiles_per_image)))
        base += len(text) + 1
    if not plans:
        return out  # type: ignore[return-value]
    # -- every token of the batch: its text, start and end on the axis
    lens, flat = _encode_offsets(tokenizer, texts)
    text_of = np.repeat(np.arange(len(texts)), lens)
    prefix = np.asarray(chunk_prefix, dtype=np.int64)[text_of]
    a, b = flat[:, 0], flat[:, 1]
    keep = (prefix == 0) | (b > prefix)  # the </img> prefix's own tokens are not the chunk's
    text_of, prefix, a, b = text_of[keep], prefix[keep], a[keep], b[keep]
    starts = np.asarray(chunk_start, dtype=np.int64)[text_of]
    a, b = np.maximum(a - prefix, 0) + starts, b - prefix + starts
    ss, se = np.asarray(span_starts, dtype=np.int64), np.asarray(span_ends + [0], dtype=np.int64)
    j = np.searchsorted(ss, a, side="right") - 1
    trained = (b > a) & (j >= 0) & (b <= se[np.where(j >= 0, j, len(span_starts))])
    n_tokens = np.bincount(text_of, minlength=len(texts))  # tokens of each chunk
    first = np.concatenate(([0], np.cumsum(n_tokens)[:-1]))  # where each chunk's tokens begin
    if template.untrained_last_token and len(trained):  # the last token of every trained run
        # runs end at a chunk's end too: an image (untrained) always follows a chunk but the last
        ends_chunk = np.zeros(len(trained), dtype=bool)
        ends_chunk[(first + n_tokens - 1)[n_tokens > 0]] = True
        nxt = np.append(trained[1:], False) & ~ends_chunk
        trained = trained & ~(trained & ~nxt)
    # -- per record: chunk and image positions in its sequence
    bos = tokenizer_bos(tokenizer) if template.bos_from_tokenizer else None
    token_pos = np.zeros(len(trained), dtype=np.int64)  # each token's position in its sample
    chunk_offset = np.zeros(len(texts), dtype=np.int64)
    record_of_text = np.zeros(len(texts), dtype=np.int64)
    layout = []
    for r, (k, chunks, tiles_per_image) in enumerate(plans):
        n = 0 if bos is None else 1
        spans = []
        image_tokens = 0
        for c, q in enumerate(chunks):
            if q >= 0:
                chunk_offset[q] = n
                record_of_text[q] = r
                n += int(n_tokens[q])
            if c < len(tiles_per_image):
                m = tokens_per_tile * tiles_per_image[c] + 2
                spans.append((n, n + m))
                n += m
                image_tokens += m
        layout.append((k, n, image_tokens, spans))
    token_pos = chunk_offset[text_of] + (np.arange(len(trained)) - first[text_of])
    rec = record_of_text[text_of]
    trained_total = np.bincount(rec[trained], minlength=len(plans))
    in_limit = trained if limit is None else trained & (token_pos < limit)
    trained_in_limit = np.bincount(rec[in_limit], minlength=len(plans))
    for r, (k, n, image_tokens, spans) in enumerate(layout):
        out[k] = SampleCounts(total_tokens=n, text_tokens=n - image_tokens, image_tokens=image_tokens,
                              image_spans=spans, trained_tokens=int(trained_total[r]),
                              trained_in_limit=int(trained_in_limit[r]))
    return out  # type: ignore[return-value]


def _encode_offsets(tokenizer: Tokenizer, texts: list[str]):
    """(tokens per text, character offsets of every token as an (N, 2) int64 array) of a batched,
    special-token-free encoding. A plain Hugging Face fast tokenizer is called through its Rust
    backend directly, exactly as its ``__call__`` does it (no truncation, no padding, its
    ``split_special_tokens``), without building a Python dict per text; anything else through
    ``__call__``."""
    import itertools

    import numpy as np

    backend = _plain_backend(tokenizer)
    if backend is not None:
        if backend.encode_special_tokens != tokenizer.split_special_tokens:
            backend.encode_special_tokens = tokenizer.split_special_tokens
        offsets = [e.offsets for e in backend.encode_batch(texts, add_special_tokens=False)]
    elif _is_rust(getattr(tokenizer, "backend", None)):  # model_folder.FastTokenizer: its backend's encode
        offsets = [e.offsets for e in tokenizer.backend.encode_batch(texts, add_special_tokens=False)]
    else:
        offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    lens = np.fromiter(map(len, offsets), dtype=np.int64, count=len(offsets))
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(offsets)), dtype=np.int64,
                       count=2 * int(lens.sum()))
    return lens, flat.reshape(-1, 2)


def _is_rust(obj: Any) -> bool:
    rust = getattr(sys.modules.get("tokenizers"), "Tokenizer", None)
    return rust is not None and isinstance(obj, rust)


def _plain_backend(tokenizer: Tokenizer):
    """The Rust tokenizer of a Hugging Face fast tokenizer whose encoding is its backend's, or None."""
    module = sys.modules.get("transformers.tokenization_utils_tokenizers")  # loaded if the tokenizer is one:
    TokenizersBackend = getattr(module, "TokenizersBackend", None)  # never import transformers (seconds) here
    if TokenizersBackend is None:
        return None
    if not isinstance(tokenizer, TokenizersBackend) or type(tokenizer)._encode_plus is not TokenizersBackend._encode_plus:
        return None
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        return None
    return backend
