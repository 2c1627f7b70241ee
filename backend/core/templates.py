"""Conversation templates of the InternVL series, as data, and the renderer that marks
which characters are trained (the assistant replies and the separator that ends each).

Pure Python: the token-level label mask is derived from these character spans with the
tokenizer's offsets (see :mod:`backend.core.samples`).
"""

from __future__ import annotations

from dataclasses import dataclass

INTERNVL_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)


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

    @property
    def stop_strings(self) -> list[str]:
        return [self.sep.strip()]


TEMPLATES: dict[str, Template] = {
    "internlm2-chat": Template(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system_message}",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>",
        bos="<s>",
    ),
    "Hermes-2": Template(
        name="Hermes-2",
        system_template="<|im_start|>system\n{system_message}",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>",
        bos=None,
    ),
    "internvl2_5": Template(
        name="internvl2_5",
        system_template="<|im_start|>system\n{system_message}",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>\n",
        bos=None,
    ),
    "phi3-chat": Template(
        name="phi3-chat",
        system_template="<|system|>\n{system_message}",
        user_role="<|user|>\n",
        assistant_role="<|assistant|>\n",
        sep="<|end|>",
        bos="<s>",
    ),
}


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
        if role == "human":
            add(template.user_role + turn["value"] + template.sep)
            expected = "gpt"
        else:
            add(template.assistant_role)
            add(turn["value"] + template.sep, trained=True)
            expected = "human"
    if add_generation_prompt:
        add(template.assistant_role)
    return Rendered("".join(parts), spans)
