"""The original checkpoint's tokenizer, rebuilt as a fast (``tokenizer.json``) tokenizer.

InternLM2 and Phi-3 ship a sentencepiece ``tokenizer.model`` behind a slow (or remote-code) class.
The fast tokenizer is built from the sentencepiece model itself with transformers' converter, which
follows the model's own normaliser settings (byte fallback, dummy prefix, whitespace handling), and
then receives the checkpoint's added tokens at their original ids.

The trap (see docs/models.md): the slow tokenizers differ in how they treat text *after* a special
token. InternLM2's class always encodes each piece of text between special tokens on its own, with
sentencepiece's dummy prefix ("legacy"); Phi-3's ``LlamaTokenizer`` config asks for ``legacy: false``,
where only the start of the whole text gets the prefix. The flag is read from the checkpoint's own
``tokenizer_config.json`` and reproduced; tests compare ids on text with special tokens followed by
words, newlines, tabs and space runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.core.families import get_family
from backend.core.samples import IMG_CONTEXT, IMG_END, IMG_START
from backend.core.templates import Template, to_jinja
from worker.convert.errors import ConversionError
from worker.convert.files import read_optional_json, write_json

ROLE_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
TOKENIZER_SOURCE_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "added_tokens.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class AddedTok:
    id: int
    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False



def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_added_tokens(src: Path) -> list[AddedTok]:
    """The added tokens of a checkpoint, from ``tokenizer_config.json`` (``added_tokens_decoder``)
    or, for older folders, ``added_tokens.json``."""
    decoder = read_optional_json(src / "tokenizer_config.json").get("added_tokens_decoder")
    out: dict[int, AddedTok] = {}
    if isinstance(decoder, dict):
        for key, tok in decoder.items():
            try:
                out[int(key)] = AddedTok(int(key), tok["content"], bool(tok.get("special", True)),
                                         bool(tok.get("lstrip", False)), bool(tok.get("rstrip", False)),
                                         bool(tok.get("single_word", False)))
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"tokenizer_config.json: added_tokens_decoder entry {key} is malformed") from None
    for content, idx in read_optional_json(src / "added_tokens.json").items():
        if isinstance(idx, int) and idx not in out:
            out[idx] = AddedTok(idx, content)
    return [out[i] for i in sorted(out)]


def special_roles(src: Path) -> dict[str, str]:
    """``bos_token``/``eos_token``/``unk_token``/``pad_token`` -> their text."""
    roles: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        source = read_optional_json(src / name)
        for key in ROLE_KEYS:
            content = _content(source.get(key))
            if content and key not in roles:
                roles[key] = content
    return roles


def uses_legacy_prefix(tokenizer_config: dict) -> bool:
    """Whether text after a special token gets sentencepiece's dummy prefix, as the original does."""
    cls = str(tokenizer_config.get("tokenizer_class") or "")
    if cls.startswith("InternLM2Tokenizer"):
        return True  # its _tokenize encodes every chunk with the prefix, whatever "legacy" says
    return bool(tokenizer_config.get("legacy", True))  # LlamaTokenizer's default at transformers 4.37


def _from_sentencepiece(path: Path, added: list[AddedTok], legacy: bool) -> Any:
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError
        raise ConversionError(f"tokenizer.model: not a sentencepiece model ({e})") from None
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 BPE
        raise ConversionError("tokenizer.model: only sentencepiece BPE models (InternLM2, Llama, Phi-3) are converted")
    renamed = {t.id: t.content for t in added if t.id < len(proto.pieces)}
    vocab: dict[str, int] = {}
    for i, piece in enumerate(proto.pieces):
        vocab.setdefault(renamed.get(i, piece.piece), i)
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=legacy)
    if tok is None:
        raise ConversionError("tokenizer.model: transformers cannot convert this sentencepiece model")
    return tok


def _from_bpe_files(src: Path) -> Any:
    from transformers.convert_slow_tokenizer import Qwen2Converter

    vocab = read_optional_json(src / "vocab.json")
    lines = (src / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    if any(len(m) != 2 for m in merges):
        raise ConversionError("merges.txt: every line must hold two symbols")
    return Qwen2Converter(None).converted(vocab=vocab, merges=merges)


def _backend(src: Path, family: str, added: list[AddedTok], tokenizer_config: dict) -> Any:
    from tokenizers import Tokenizer

    if (src / "tokenizer.model").exists():
        return _from_sentencepiece(src / "tokenizer.model", added, uses_legacy_prefix(tokenizer_config))
    if (src / "tokenizer.json").exists():
        try:
            return Tokenizer.from_file(str(src / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a plain Exception
            raise ConversionError(f"tokenizer.json: cannot load it ({e})") from None
    if get_family(family).tokenizer == "bpe" and (src / "vocab.json").exists() and (src / "merges.txt").exists():
        return _from_bpe_files(src)
    raise ConversionError(f"{src}: no tokenizer (tokenizer.model, tokenizer.json, or vocab.json + merges.txt)")


def non_legacy_start(tok: Any, added: list[str], all_special: list[str]) -> None:
    """Make a ``legacy: false`` sentencepiece tokenizer treat the start of the text as
    ``LlamaTokenizer(legacy=False)`` does: it prepends "▁" to the *whole* text before splitting on
    added tokens, so the text's first piece keeps the prefix even when it starts with a space
    (" a" -> "▁", "▁a") and a lone "▁" token stays before an added token that starts the text,
    except before one of its "all special" tokens (bos, eos, unk, pad, additional), where it is
    dropped. tokenizers' Metaspace cannot do either (it prepends only to text that does not start
    with "▁", and after the added tokens are split off); a normaliser over the whole text can, when
    the added tokens are matched on normalised text (``normalized=True``, see :func:`_add_tokens`).
    """
    import re

    from tokenizers import Regex, normalizers, pre_tokenizers

    def alternatives(tokens: list[str]) -> str:
        return "|".join(re.escape(s) for s in sorted(set(tokens), key=len, reverse=True))

    # The normaliser also runs over each added token's own text when it is matched: an added
    # token alone gets no prefix, or it would no longer match itself.
    alone = f"(?!(?:{alternatives(added)})\\z)" if added else ""
    steps = [normalizers.Replace(" ", "\u2581"), normalizers.Replace(Regex(f"\\A{alone}"), "\u2581")]
    if all_special:
        steps.append(normalizers.Replace(Regex(f"\\A\u2581(?=(?:{alternatives(all_special)}))"), ""))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)


def _add_tokens(tok: Any, added: list[AddedTok], normalized: bool = False) -> None:
    from tokenizers import AddedToken

    for t in added:
        token = AddedToken(t.content, single_word=t.single_word, lstrip=t.lstrip, rstrip=t.rstrip,
                           normalized=normalized, special=t.special)
        have = tok.token_to_id(t.content)
        if have is None and t.id != tok.get_vocab_size(with_added_tokens=True):
            raise ConversionError(f"tokenizer: added token {t.content!r} has id {t.id}, but the next free id is "
                                  f"{tok.get_vocab_size(with_added_tokens=True)} (gaps are not supported)")
        (tok.add_special_tokens if t.special else tok.add_tokens)([token])
        if tok.token_to_id(t.content) != t.id:
            raise ConversionError(f"tokenizer: added token {t.content!r} should have id {t.id}, "
                                  f"got {tok.token_to_id(t.content)}")


def build_tokenizer(src: Path, family: str, template: Template) -> Any:
    """The checkpoint's tokenizer as a transformers fast tokenizer with the InternVL image tokens,
    the template's chat template, and BOS added exactly when the original tokenizer added it."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    config = read_optional_json(src / "tokenizer_config.json")
    added = read_added_tokens(src)
    tok = _backend(src, family, added, config)
    roles = special_roles(src)
    non_legacy = (src / "tokenizer.model").exists() and not uses_legacy_prefix(config)
    if non_legacy:
        extra = [_content(x) for x in config.get("additional_special_tokens") or []]
        non_legacy_start(tok, [t.content for t in added], [*roles.values(), *(x for x in extra if x)])
    _add_tokens(tok, added, normalized=non_legacy)
    for needed in (IMG_START, IMG_END, IMG_CONTEXT):
        if tok.token_to_id(needed) is None:
            raise ConversionError(f"tokenizer: the InternVL token {needed} is missing from this checkpoint's tokenizer")
    bos = roles.get("bos_token")
    add_bos = bool(config.get("add_bos_token", get_family(family).adds_bos and bos is not None))
    if add_bos and bos is not None and tok.token_to_id(bos) is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **roles, model_max_length=int(config.get("model_max_length", 8192)),
        start_image_token=IMG_START, end_image_token=IMG_END, context_image_token=IMG_CONTEXT,
        clean_up_tokenization_spaces=False)
    fast.chat_template = to_jinja(template)
    for t in added:
        if fast.convert_tokens_to_ids(t.content) != t.id:
            raise ConversionError(f"tokenizer: {t.content!r} maps to {fast.convert_tokens_to_ids(t.content)}, not {t.id}")
    return fast


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """Save, naming the class ``PreTrainedTokenizerFast``: transformers 5 reads it as its tokenizers
    backend, and transformers 4 (InternVL's scripts, lmdeploy, VLMEvalKit) knows that name too."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = read_optional_json(path)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(path, config)
