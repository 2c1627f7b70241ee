"""Generated token ids as readable text, also when they are not valid UTF-8.

A model emits bytes, not characters: byte-fallback tokens (``<0xE2>`` in sentencepiece
vocabularies such as InternLM2's and Phi-3's) and byte-level BPE tokens (Qwen2's, the demo
model's) each carry one or a few bytes, and a character needs up to four. A trained model emits
whole characters; an untrained or barely trained one emits stray bytes, and the tokenizer's own
decode turns each into U+FFFD (``�``), which says nothing. Here a byte that no following token
completes into a character is shown as ``<0xNN>``; everything else is the tokenizer's own text.

The same text whole (evaluation answers, a chat's final reply: :func:`readable_text`) and token by
token as it is generated (a chat's streamed pieces: :class:`ReadableText`), where bytes that may
still become a character wait for the tokens that complete them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache

REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def _byte_level_chars() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def token_bytes(token: str) -> bytes:
    """The bytes one token stands for: a byte-fallback token's byte, a byte-level token's bytes,
    else the token's text (sentencepiece's ``▁`` as a space)."""
    m = _BYTE_TOKEN.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    table = _byte_level_chars()
    if token and all(c in table for c in token):
        return bytes(table[c] for c in token)
    return token.replace("\u2581", " ").encode()


def show_bytes(data: bytes) -> str:
    """``data`` as text, each byte that is not part of a valid UTF-8 character as ``<0xNN>``."""
    text = data.decode("utf-8", errors="surrogateescape")  # bad bytes -> U+DC80..U+DCFF
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if "\udc80" <= c <= "\udcff" else c for c in text)


class ReadableText:
    """Decodes token ids as they arrive: each run of tokens that decodes to whole characters is the
    tokenizer's text for it (decoded after the previous run, so spacing is the tokenizer's). A run
    whose end is not a whole character yet waits for more tokens; a token whose bytes are followed
    by something that does not complete them is shown as ``<0xNN>``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.parts: list[str] = []
        self.done = 0  # ids[:done] are in parts
        self.context: list[int] = []  # the last run that decoded cleanly: the left context of the next

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def add(self, ids: Iterable[int]) -> None:
        self.ids.extend(ids)
        self._advance(final=False)

    def text(self, final: bool = False) -> str:
        """What is settled (``final``: everything, bytes still incomplete at the end as ``<0xNN>``)."""
        self._advance(final)
        return "".join(self.parts)

    def _advance(self, final: bool) -> None:
        ids, n = self.ids, len(self.ids)
        while self.done < n:
            i = self.done
            before = self._decode(self.context)
            for j in range(i + 1, n + 1):
                text = self._decode(self.context + ids[i:j])
                if not text.startswith(before):
                    break
                if REPLACEMENT not in text:
                    self.parts.append(text[len(before):])
                    self.context, self.done = ids[i:j], j
                    break
                if REPLACEMENT in text.rstrip(REPLACEMENT):
                    break  # a byte that is not part of a character, followed by more text
                # else: only the end is not a character yet; the next token may complete it
            else:
                if not final:
                    return  # the tokens that complete it may still come
            if self.done == i:
                token = self.tokenizer.convert_ids_to_tokens(ids[i])
                self.parts.append(show_bytes(token_bytes(token)))
                self.done = i + 1


def readable_text(tokenizer, ids: Sequence[int]) -> str:
    """The tokenizer's text for ``ids`` (special tokens left out), with ``<0xNN>`` for each byte
    that is not part of a character instead of the tokenizer's ``�``."""
    whole = tokenizer.decode(list(ids), skip_special_tokens=True)
    if REPLACEMENT not in whole:
        return whole
    reader = ReadableText(tokenizer)
    reader.add(ids)
    return reader.text(final=True)
