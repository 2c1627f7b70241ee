"""Conversation templates of the InternVL series, as data, and the renderer that marks
which characters are trained (the assistant replies and the separator that ends each).

Templates are registered (:func:`register_template`, as ms-swift's ``register_template``) beside
the family table (:mod:`backend.core.families`), which names the ones each language model was
released with. Which template a given model uses is decided by its model card
(:mod:`backend.core.model_card`) and nowhere else. A model whose tokenizer brings its own Jinja
chat template (the transformers ``-hf`` checkpoints) renders with it: :func:`tokenizer_template`,
through transformers' own Jinja renderer (the one ``apply_chat_template`` runs), the same object
in validation, the preview, training and generation.

No torch: the token-level label mask is derived from these character spans with the
tokenizer's offsets (see :mod:`backend.core.samples`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache

INTERNVL_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)
#: InternVL 2.5's own default (the reference's ``internvl2_5`` template in conversation.py)
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


#: pseudo template name: render with the tokenizer's own chat template (transformers ``-hf``
#: checkpoints); the model card builds it with :func:`tokenizer_template`
TOKENIZER_TEMPLATE = "tokenizer"
#: what an image becomes in a list-content message of a chat template (InternVLProcessor expands it)
IMAGE_CONTEXT_TOKEN = "<IMG_CONTEXT>"


class TemplateError(ValueError):
    """A conversation cannot be rendered with the chosen template."""


@dataclass(frozen=True)
class Template:
    name: str
    system_template: str  # with "{system_message}"
    user_role: str
    assistant_role: str
    sep: str
    bos: str | None
    system_message: str = INTERNVL_SYSTEM_MESSAGE
    supports_system: bool = True
    #: the reference strips each message (``value.strip()``) before rendering (internlm2-chat)
    strip: bool = False
    #: the reference's internvl2_5 preprocessing leaves the last token of each reply (the newline
    #: of ``<|im_end|>\n``) untrained; the reply's span still covers the whole separator
    untrained_last_token: bool = False
    #: a BOS token id first exactly when the tokenizer adds one by itself (internvl2_5 on InternLM2)
    bos_from_tokenizer: bool = False
    #: a replacement for :func:`render` (any ``apply`` function, :func:`chat_template_template`);
    #: None: the fields above, or ``chat_template``
    renderer: Callable[..., Rendered] | None = field(default=None, compare=False, repr=False)
    #: the tokenizer's own Jinja chat template (the ``tokenizer`` template): rendered by transformers'
    #: Jinja renderer with ``special_tokens`` (``bos_token``, ``eos_token``...) as its variables.
    #: Plain data, so the template pickles into validation workers and keys caches.
    chat_template: str | None = field(default=None, repr=False)
    special_tokens: tuple[tuple[str, str], ...] = ()

    @property
    def stop_strings(self) -> list[str]:
        return [self.sep.strip()]

    def fingerprint(self) -> str:
        """A stable digest of everything the template renders with (equal templates, equal digests,
        in any process): for keys of caches on disk. A template with a ``renderer`` function has none."""
        if self.renderer is not None:
            raise ValueError("a template rendered by a function has no fingerprint; use tokenizer_template")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "renderer"}
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Add a conversation template to the registry (a family names it in its ``templates``)."""
    if template.name == TOKENIZER_TEMPLATE or template.name in TEMPLATES:
        raise ValueError(f"template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


for _t in (
    Template(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system_message}",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>",
        bos="<s>",
        strip=True,
    ),
    Template(
        name="Hermes-2",
        system_template="<|im_start|>system\n{system_message}",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>",
        bos=None,
    ),
    Template(
        name="internvl2_5",
        system_template="<|im_start|>system\n{system_message}",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>\n",
        bos=None,
        system_message=INTERNVL2_5_SYSTEM_MESSAGE,
        untrained_last_token=True,
        bos_from_tokenizer=True,
    ),
    Template(
        name="phi3-chat",
        system_template="<|system|>\n{system_message}",
        user_role="<|user|>\n",
        assistant_role="<|assistant|>\n",
        sep="<|end|>",
        # The reference tokenizes with the tokenizer's own special tokens: a BOS only where its
        # add_bos_token says so (false in Phi-3's config); its non-legacy prefix then puts a lone "▁"
        # token before <|system|>, which the converted tokenizer reproduces
        bos=None,
        bos_from_tokenizer=True,
    ),
):
    register_template(_t)


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise TemplateError(f"unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None


@dataclass(frozen=True)
class Rendered:
    """The full prompt text and the character spans [start, end) that carry labels."""

    text: str
    trained_spans: list[tuple[int, int]]


def render(conversations: list[dict], template: Template, *, system_message: str | None = None,
           add_generation_prompt: bool = False) -> Rendered:
    """Render a ``[{from, value}]`` conversation as the model sees it.

    Each turn is ``role + text + sep``; an optional leading ``system`` turn replaces the
    default system message. Only assistant text plus its separator is trained.
    """
    if template.renderer is not None:
        return template.renderer(conversations, system_message=system_message,
                                 add_generation_prompt=add_generation_prompt)
    if template.chat_template is not None:
        return chat_template_renderer(jinja_apply(template.chat_template, template.special_tokens))(
            conversations, system_message=system_message, add_generation_prompt=add_generation_prompt)
    turns = list(conversations)
    if turns and turns[0].get("from") == "system":
        if not template.supports_system:
            raise TemplateError(f"template {template.name} has no system turn")
        system_message = turns[0]["value"]
        turns = turns[1:]
    sysmsg = template.system_message if system_message is None else system_message
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0

    def add(s: str, trained: bool = False) -> None:
        nonlocal pos
        parts.append(s)
        if trained and s:
            spans.append((pos, pos + len(s)))
        pos += len(s)

    if template.bos:
        add(template.bos)
    add(template.system_template.format(system_message=sysmsg) + template.sep)
    expected = "human"
    for i, turn in enumerate(turns):
        role = turn.get("from")
        if role != expected:
            raise TemplateError(f"turn {i}: expected role {expected!r}, got {role!r}")
        value = turn["value"].strip() if template.strip else turn["value"]
        if role == "human":
            add(template.user_role + value + template.sep)
            expected = "gpt"
        else:
            add(template.assistant_role)
            add(value + template.sep, trained=True)
            expected = "human"
    if add_generation_prompt:
        add(template.assistant_role)
    return Rendered("".join(parts), spans)


#: ``apply(messages, add_generation_prompt) -> text``: a chat template over
#: ``[{"role": "system"|"user"|"assistant", "content": str}]`` (for instance a bound
#: ``tokenizer.apply_chat_template(..., tokenize=False)``)
ApplyChatTemplate = Callable[[list[dict], bool], str]

_ROLES = {"human": "user", "gpt": "assistant"}


def chat_template_renderer(apply: ApplyChatTemplate) -> Callable[..., Rendered]:
    """A :func:`render` replacement driven by a tokenizer's chat template.

    The trained span of each assistant turn is what the template adds between the prompt
    with the generation prompt and the conversation including that reply, i.e. the reply
    and whatever closes it (``<|im_end|>\\n`` for Qwen-style templates). A template whose
    earlier output is not a prefix of its later output cannot be labelled this way and is
    refused rather than guessed at.
    """

    def renderer(conversations: list[dict], *, system_message: str | None = None,
                 add_generation_prompt: bool = False) -> Rendered:
        turns = list(conversations)
        if turns and turns[0].get("from") == "system":
            system_message = turns[0]["value"]
            turns = turns[1:]
        msgs: list[dict] = [] if system_message is None else [{"role": "system", "content": system_message}]
        prefixes: list[tuple[str, str]] = []
        expected = "human"
        for i, turn in enumerate(turns):
            role = turn.get("from")
            if role != expected:
                raise TemplateError(f"turn {i}: expected role {expected!r}, got {role!r}")
            if role == "gpt":
                before = apply(msgs, True)
                msgs.append({"role": "assistant", "content": turn["value"]})
                prefixes.append((before, apply(msgs, False)))
            else:
                msgs.append({"role": "user", "content": turn["value"]})
            expected = "gpt" if role == "human" else "human"
        text = apply(msgs, add_generation_prompt)
        spans: list[tuple[int, int]] = []
        for before, after in prefixes:
            if not after.startswith(before) or not text.startswith(after):
                raise TemplateError("the tokenizer's chat template renders earlier turns differently once later "
                                    "turns are added; its assistant replies cannot be located for the labels")
            spans.append((len(before), len(after)))
        return Rendered(text, spans)

    return renderer


def chat_template_template(apply: ApplyChatTemplate, stop: str) -> Template:
    """A template rendered by any ``apply`` function (tests hand in ``tokenizer.apply_chat_template``);
    generation stops at ``stop``. The studio's own ``tokenizer`` template is :func:`tokenizer_template`."""
    return Template(name=TOKENIZER_TEMPLATE, system_template="{system_message}", user_role="", assistant_role="",
                    sep=stop, bos=None, renderer=chat_template_renderer(apply))


def tokenizer_template(chat_template: str, special_tokens: dict[str, str] | tuple = (), stop: str = "") -> Template:
    """The ``tokenizer`` template: the tokenizer's own Jinja ``chat_template`` with its special
    tokens (``bos_token``, ``eos_token``... as ``tokenizer.special_tokens_map`` has them), stopping
    at ``stop`` (its EOS token). Renders exactly as ``tokenizer.apply_chat_template``."""
    items = tuple(sorted(special_tokens.items() if isinstance(special_tokens, dict) else special_tokens))
    return Template(name=TOKENIZER_TEMPLATE, system_template="{system_message}", user_role="", assistant_role="",
                    sep=stop, bos=None, chat_template=chat_template, special_tokens=items)


@lru_cache(maxsize=16)
def jinja_apply(chat_template: str, special_tokens: tuple[tuple[str, str], ...] = ()) -> ApplyChatTemplate:
    """``apply(messages, add_generation_prompt) -> text`` by transformers' Jinja renderer, the one
    ``apply_chat_template`` runs (its sandbox, filters and globals), with the special tokens as
    variables (imported on first use: transformers' template module needs no torch)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    variables = dict(special_tokens)

    def apply(messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            rendered, _ = render_jinja_template(conversations=[messages], chat_template=chat_template,
                                                add_generation_prompt=add_generation_prompt, **variables)
        except Exception as e:  # jinja2's TemplateError, or a template that raises by itself
            raise TemplateError(f"the tokenizer's chat template cannot render this conversation: {e}") from None
        return rendered[0]

    return apply


def to_jinja(t: Template) -> str:
    """A Hugging Face chat template (Jinja) that renders exactly like :func:`render`, saved with
    a model's tokenizer (the converted checkpoints, the demo model, a fine-tune whose tokenizer had
    none) so ``tokenizer.apply_chat_template`` reproduces the training format.

    String contents go through as they are (vlstudio's ``<image>`` placeholders included); list
    contents (the transformers multimodal form) render images as ``<IMG_CONTEXT>`` + newline, which is
    what ``InternVLProcessor`` expands.
    """
    sys_prefix, sys_suffix = t.system_template.split("{system_message}")
    q = json.dumps
    trim = " | trim" if t.strip else ""  # the reference strips every message (internlm2-chat)
    return (
        "{%- macro render(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
        "{%- for part in content -%}{%- if part['type'] == 'image' -%}{{ " + q(IMAGE_CONTEXT_TOKEN + "\n") + " }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system_message = render(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set system_message = " + q(t.system_message, ensure_ascii=False) + " -%}"
        "{%- set loop_messages = messages -%}{%- endif -%}"
        + ("{{ " + q(t.bos) + " }}" if t.bos else "")
        + "{{ " + q(sys_prefix) + " + system_message + " + q(sys_suffix + t.sep) + " }}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{ " + q(t.user_role) + " + render(message['content'])" + trim + " + "
        + q(t.sep) + " }}{%- elif message['role'] == 'assistant' -%}{{ " + q(t.assistant_role)
        + " + render(message['content'])" + trim + " + " + q(t.sep) + " }}"
        "{%- else -%}{{ raise_exception('roles must be system (first), user or assistant') }}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ " + q(t.assistant_role) + " }}{%- endif -%}"
    )
