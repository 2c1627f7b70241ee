"""The model card: what the studio knows about one model folder, read once from its data files
(``config.json``, the tokenizer's files, the image processor's config), never by running code
from the folder.

A card says the folder's format (``original`` InternVL remote-code layout, ``native``: a
transformers-native folder vlstudio wrote, ``hf``: a transformers ``-hf`` checkpoint), its
language-model family (:mod:`backend.core.families`), its conversation template, its tiling
defaults, its tile geometry (image size, image tokens per tile), its shapes and parameter counts
(:mod:`backend.core.model_shapes`) and the facts about its tokenizer that rendering needs (its own
Jinja chat template and special tokens). Dataset validation and the preview, registration
(import), training, generation (evaluation, playground), export, the memory estimate and the demo
model all take their template and tiling from here; no other module decides either.

The rules, each written once:

- **template**: the config's ``template`` field (original configs and every folder vlstudio
  writes carry one); else, for an ``-hf`` checkpoint whose tokenizer brings a chat template,
  ``tokenizer`` (it renders with that template); else the family's default.
- **tiling** (``max_dynamic_patch``, ``min_dynamic_patch``, ``use_thumbnail``,
  ``dynamic_image_size``): the config's keys; missing ones in an original config take the
  defaults of InternVL's ``InternVLChatConfig`` (what the original code runs with,
  :data:`ORIGINAL_TILING`), in a native one the image processor's (``max_patches``,
  ``min_patches``, ``crop_to_patches``) and then :data:`DEFAULT_TILING`.
- a choice made for a run is layered over the card's tiling by :func:`layered_tiling` (a
  preset, a job's hyperparameters, an evaluation's override), which also says where the tile
  budget came from, for messages. With no model at all, :data:`DEFAULT_TILING` is the base.

No torch, no transformers model code: JSON and text files only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from backend.core.families import FAMILIES, Family, family_of_config
from backend.core.model_folder import ModelFolderError, read_config
from backend.core.model_shapes import ModelShapes, ShapeError, shapes_from_config, tile_geometry
from backend.core.templates import TEMPLATES, TOKENIZER_TEMPLATE, Template, get_template, tokenizer_template

FORMATS = ("original", "native", "hf")


@dataclass(frozen=True)
class Tiling:
    """How images are cut into tiles: the recipe's four switches."""

    max_dynamic_patch: int = 12
    min_dynamic_patch: int = 1
    use_thumbnail: bool = True
    dynamic_image_size: bool = True

    KEYS: ClassVar[tuple[str, ...]] = ("max_dynamic_patch", "min_dynamic_patch", "use_thumbnail",
                                       "dynamic_image_size")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, values: Mapping[str, Any] | Any | None = None, **more: Any) -> Tiling:
        """This tiling with the tiling keys of ``values`` (a mapping or an object with those
        attributes, such as ``Hyperparameters``) and ``more`` that are set (None: keep)."""
        new: dict[str, Any] = {}
        for source in (values, more):
            if source is None:
                continue
            for key in self.KEYS:
                value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
                if value is not None:
                    new[key] = value
        return replace(self, **{k: (bool(v) if isinstance(getattr(self, k), bool) else int(v))
                                for k, v in new.items()})

    @property
    def tiles_per_image(self) -> int:
        """The most tiles one image can take: the grid, plus the thumbnail when the grid can have
        more than one tile; one without dynamic tiling."""
        if not self.dynamic_image_size:
            return 1
        return self.max_dynamic_patch + (1 if self.use_thumbnail and self.max_dynamic_patch > 1 else 0)

    def describe(self) -> str:
        return (f"{self.min_dynamic_patch}..{self.max_dynamic_patch} tiles, thumbnail "
                f"{'on' if self.use_thumbnail else 'off'}, dynamic {'on' if self.dynamic_image_size else 'off'}")


#: the base when nothing says otherwise (a native folder without tiling keys or image processor,
#: a dataset checked with no model chosen): what every released InternVL checkpoint's config,
#: the seed's scripts and transformers' InternVL image processor (``max_patches``) use
DEFAULT_TILING = Tiling()
#: the defaults of InternVL's ``InternVLChatConfig``: what the original code runs an original
#: config with when it lacks a key
ORIGINAL_TILING = Tiling(max_dynamic_patch=6, min_dynamic_patch=1, use_thumbnail=False, dynamic_image_size=False)

_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    return value if isinstance(value, dict) else {}


def _content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class TokenizerFacts:
    """What rendering needs from a folder's tokenizer files, as ``AutoTokenizer`` reads them."""

    #: the tokenizer files present (tokenizer.json, tokenizer.model, vocab.json...)
    files: tuple[str, ...] = ()
    #: the tokenizer's own Jinja chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    #: ``chat_template`` (its ``default`` one when it lists several), else the processor's legacy
    #: ``chat_template.json``
    chat_template: str | None = field(default=None, repr=False)
    #: ``tokenizer.special_tokens_map``: the named special tokens a chat template sees as variables
    special_tokens: tuple[tuple[str, str], ...] = ()

    @property
    def eos_token(self) -> str | None:
        return dict(self.special_tokens).get("eos_token")

    @classmethod
    def read(cls, folder: Path) -> TokenizerFacts:
        names = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")
        config = _json(folder / "tokenizer_config.json")
        return cls(files=tuple(n for n in names if (folder / n).is_file()), chat_template=_chat_template(folder, config),
                   special_tokens=tuple(sorted(_special_tokens(folder, config).items())))


def _chat_template(folder: Path, config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):  # several named templates: the tokenizer renders with "default"
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}.get("default")
    if isinstance(value, str) and value:
        return value
    legacy = _json(folder / "chat_template.json").get("chat_template")
    return legacy if isinstance(legacy, str) and legacy else None


def _special_tokens(folder: Path, config: dict) -> dict[str, str]:
    """The named special tokens as transformers 5 loads them: ``tokenizer_config.json``'s, with a
    legacy ``special_tokens_map.json`` over them only when the config has no ``added_tokens_decoder``,
    plus the named extra ones (``context_image_token``...: ``extra_special_tokens`` as a mapping, or
    ``model_specific_special_tokens`` as transformers 5 saves them)."""
    out = {k: v for k in _ROLES if (v := _content(config.get(k))) is not None}
    named = [config.get("extra_special_tokens"), config.get("model_specific_special_tokens")]  # as saved by v4 / v5
    if "added_tokens_decoder" not in config:
        legacy = _json(folder / "special_tokens_map.json")
        out.update({k: v for k in _ROLES if (v := _content(legacy.get(k))) is not None})
        named.append(legacy.get("extra_special_tokens"))
    for extra in named:
        if isinstance(extra, dict):
            out.update({k: v for k, raw in extra.items() if (v := _content(raw)) is not None})
    return out


def format_of(config: dict) -> str | None:
    """``original`` (``internvl_chat``), ``native`` (``internvl`` written by vlstudio: it names its
    template or keeps its original config), ``hf`` (any other ``internvl``); None otherwise."""
    model_type = config.get("model_type")
    if model_type == "internvl_chat" or (model_type is None and isinstance(config.get("llm_config"), dict)):
        return "original"
    if model_type == "internvl" or (model_type is None and isinstance(config.get("text_config"), dict)):
        return "native" if config.get("template") or config.get("vlstudio_source") else "hf"
    return None


def template_of(config: dict, fmt: str | None, chat_template: str | None) -> str | None:
    """The template rule (module docstring); None when nothing tells. An unknown declared name is
    a :class:`ModelFolderError`."""
    declared = config.get("template")
    if isinstance(declared, str) and declared:
        if declared not in TEMPLATES and declared != TOKENIZER_TEMPLATE:
            raise ModelFolderError(f"config.json names template {declared!r}, which vlstudio does not know (known: "
                                   f"{', '.join([*sorted(TEMPLATES), TOKENIZER_TEMPLATE])})")
        return declared
    if fmt == "hf" and chat_template:
        return TOKENIZER_TEMPLATE
    family = family_of_config(config)
    return family.default_template if family else None


def tiling_of(config: dict, fmt: str | None, processor: dict | None = None) -> Tiling:
    """The tiling rule (module docstring)."""
    if fmt == "original":
        base = ORIGINAL_TILING
    else:
        pre = processor or {}
        base = DEFAULT_TILING.updated(max_dynamic_patch=pre.get("max_patches"), min_dynamic_patch=pre.get("min_patches"),
                                      dynamic_image_size=pre.get("crop_to_patches"))
    values = {k: v[0] if isinstance(v, list | tuple) and v else v for k, v in config.items() if k in Tiling.KEYS}
    return base.updated({k: v for k, v in values.items() if isinstance(v, int | float | bool)})


@dataclass(frozen=True)
class ModelCard:
    """One model folder's facts (see the module docstring)."""

    path: str | None
    format: str | None
    family: str | None
    #: the config's own ``template`` field, if any
    declared_template: str | None
    #: the template it trains and chats with; None: nothing tells (a template must be named)
    template: str | None
    tiling: Tiling
    image_size: int
    tokens_per_tile: int
    shapes: ModelShapes | None
    tokenizer: TokenizerFacts
    architecture: str | None = None
    config: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def family_entry(self) -> Family | None:
        return FAMILIES.get(self.family or "")

    def conversation_template(self, name: str | None = None) -> Template:
        """The :class:`Template` of ``name`` (default: the card's) for this model: ``tokenizer`` is
        this tokenizer's own chat template with its special tokens, stopping at its EOS token."""
        name = name or self.template
        if name is None:
            raise ModelFolderError("cannot tell this model's conversation template (no 'template' in config.json, "
                                   "no chat template in its tokenizer, no known language-model family); name one")
        if name != TOKENIZER_TEMPLATE:
            return get_template(name)
        if not self.tokenizer.chat_template:
            raise ModelFolderError("template 'tokenizer' needs a tokenizer with a chat template; this model's "
                                   "tokenizer has none")
        return tokenizer_template(self.tokenizer.chat_template, self.tokenizer.special_tokens,
                                  stop=self.tokenizer.eos_token or "")

    def geometry(self, force_image_size: int | None = None) -> tuple[int, int]:
        """(tile size in px, image tokens per tile), or those of ``force_image_size`` tiles."""
        if not force_image_size:
            return self.image_size, self.tokens_per_tile
        return tile_geometry(self.config, force_image_size)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON."""
        return {"path": self.path, "format": self.format, "family": self.family, "template": self.template,
                "tiling": {"image_size": self.image_size, "tokens_per_tile": self.tokens_per_tile,
                           **self.tiling.to_dict()},
                "shapes": self.shapes.to_dict() if self.shapes else None,
                "tokenizer": {"files": list(self.tokenizer.files),
                              "chat_template": self.tokenizer.chat_template is not None,
                              "special_tokens": dict(self.tokenizer.special_tokens)}}


def card_from_config(config: dict, folder: Path | None = None, tokenizer: TokenizerFacts | None = None) -> ModelCard:
    """The card of a ``config.json`` (and, given ``folder``, of the tokenizer and image-processor
    files beside it; ``tokenizer``: facts given instead of read)."""
    fmt = format_of(config)
    if tokenizer is None:
        tokenizer = TokenizerFacts.read(folder) if folder is not None else TokenizerFacts()
    processor = _json(folder / "preprocessor_config.json") if folder is not None and fmt != "original" else {}
    family = family_of_config(config)
    try:
        shapes = shapes_from_config(config)
    except (ShapeError, TypeError, ValueError):
        shapes = None
    size, tokens = tile_geometry(config)
    llm = config.get("llm_config" if fmt == "original" else "text_config") or config.get("llm_config") or {}
    declared = config.get("template") if isinstance(config.get("template"), str) and config.get("template") else None
    return ModelCard(
        path=str(Path(folder).resolve()) if folder is not None else None, format=fmt,
        family=family.name if family else None, declared_template=declared,
        template=template_of(config, fmt, tokenizer.chat_template), tiling=tiling_of(config, fmt, processor),
        image_size=size, tokens_per_tile=tokens, shapes=shapes, tokenizer=tokenizer,
        architecture=(llm.get("architectures") or [llm.get("model_type")])[0] if isinstance(llm, dict) else None,
        config=config)


_CARD_FILES = ("config.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
               "special_tokens_map.json", "preprocessor_config.json")


def read_card(folder: Path | str) -> ModelCard:
    """The card of a model folder, read once per version of its files (a re-exported or
    re-trained folder is read again). :class:`ModelFolderError` says what is missing or wrong."""
    folder = Path(folder)
    stamps = []
    for name in _CARD_FILES:
        try:
            st = (folder / name).stat()
            stamps.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((name, 0, -1))
    return _read_card(str(folder.resolve()), tuple(stamps))


@lru_cache(maxsize=64)
def _read_card(folder: str, stamps: tuple) -> ModelCard:
    del stamps  # the cache key: the files' versions
    return card_from_config(read_config(Path(folder)), Path(folder))


def layered_tiling(base: ModelCard | Tiling | None, *layers: tuple[str, Mapping[str, Any] | Any | None],
                   model: str | None = None) -> tuple[Tiling, str]:
    """The tiling a run or a check uses: the model card's (or a given tiling; :data:`DEFAULT_TILING`
    with no model), with each ``(source, values)`` layer over it in order (a preset, a job's
    hyperparameters, an override); returns it with the source of its ``max_dynamic_patch`` in
    words, for messages (``model``: the model's name there)."""
    if base is None:
        tiling, source = DEFAULT_TILING, "vlstudio's default, no model chosen"
    else:
        tiling = base.tiling if isinstance(base, ModelCard) else base
        source = f"model {model!r}'s own" if model else "the model's own"
    for name, values in layers:
        if values is None:
            continue
        tiling = tiling.updated(values)
        mdp = values.get("max_dynamic_patch") if isinstance(values, Mapping) else getattr(values, "max_dynamic_patch",
                                                                                           None)
        if mdp is not None:
            source = name
    return tiling, source
