"""Reading a model folder's files: its ``config.json`` and its tokenizer.

What the folder *is* (template, tiling, geometry, shapes, tokenizer facts) is its model card
(:mod:`backend.core.model_card`). The tokenizer is the folder's ``tokenizer.json`` run through
the ``tokenizers`` library directly (no torch, no transformers import); folders without one fall
back to transformers' ``AutoTokenizer`` (fast tokenizers only).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


class ModelFolderError(ValueError):
    """The folder is not a usable model folder; the message says what is missing."""


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{model_dir}: no config.json (not a model folder)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: not a JSON object")
    return config


class FastTokenizer:
    """A ``tokenizers.Tokenizer`` behind the small interface :mod:`backend.core.samples` uses.

    Same ids and offsets as transformers' fast tokenizer built on the same ``tokenizer.json``
    (it is the same Rust object), at half the per-call overhead. Picklable, so the validation
    worker processes receive it once.
    """

    def __init__(self, tokenizer: Any, cache_size: int = 256) -> None:
        self.backend = tokenizer
        self._ids: dict[str, int | None] = {}
        # Every sample starts with the same BOS + system message + user role: remembering the
        # last texts saves one of the two tokenizer calls of a typical sample. lru_cache is
        # thread-safe; its results are tuples, so callers cannot alter a cached entry.
        self._cache_size = cache_size
        self._encode = lru_cache(maxsize=cache_size)(self._encode_uncached)

    def _encode_uncached(self, text: str, add_special_tokens: bool) -> tuple[tuple, tuple]:
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        return tuple(enc.ids), tuple(enc.offsets)

    def __call__(self, text: str | list[str], add_special_tokens: bool = False, return_offsets_mapping: bool = False,
                 **_: Any) -> dict:
        if isinstance(text, list):  # a batch, as transformers' tokenizers take it
            encs = self.backend.encode_batch(text, add_special_tokens=add_special_tokens)
            out = {"input_ids": [e.ids for e in encs]}
            if return_offsets_mapping:
                out["offset_mapping"] = [e.offsets for e in encs]
            return out
        if len(text) <= 4096:
            ids, offsets = self._encode(text, add_special_tokens)
        else:
            ids, offsets = self._encode_uncached(text, add_special_tokens)
        out: dict[str, tuple] = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def convert_tokens_to_ids(self, token: str) -> int | None:
        if token not in self._ids:
            self._ids[token] = self.backend.token_to_id(token)
        return self._ids[token]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getstate__(self) -> dict:
        return {"backend": self.backend, "cache_size": self._cache_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["backend"], state.get("cache_size", 256))


def load_tokenizer(model_dir: Path) -> Any:
    """The folder's tokenizer: ``tokenizer.json`` via ``tokenizers``, else ``AutoTokenizer``."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            return FastTokenizer(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise ModelFolderError(f"{path}: cannot load the tokenizer ({e})") from None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ModelFolderError(f"{model_dir}: no tokenizer.json and transformers cannot load a tokenizer "
                               f"({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False):
        raise ModelFolderError(f"{model_dir}: the tokenizer has no fast version; token offsets are needed")
    return tok


def require_image_tokens(tokenizer: Any) -> None:
    """Refuse a tokenizer without the image special tokens (every count would be wrong)."""
    from backend.core.samples import IMG_CONTEXT, IMG_END, IMG_START

    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT) if tokenizer.convert_tokens_to_ids(t) is None]
    if missing:
        raise ModelFolderError(f"the tokenizer lacks the image tokens {', '.join(missing)}")
