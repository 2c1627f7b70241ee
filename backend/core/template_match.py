"""Does a conversation template fit a model? Checked before training starts.

The reference trains a model whose ``conv_style`` does not match its tokenizer on labels
that are all masked: zero loss, a "successful" run, and a model that learnt nothing. Here a
mismatch is an error, found from three independent signals:

1. the model's card (:mod:`backend.core.model_card`): its config's ``template`` field (original
   InternVL configs and the folders vlstudio writes), else the templates its language-model
   family was released with (:mod:`backend.core.families`);
2. the vocabulary: every special marker of the template (``<|im_start|>``, ``<|end|>``...)
   must be one token, or the model sees a format it was never trained on;
3. the tokenizer's own chat template, when it has one, must use the same markers.

Which template a model uses when none is named is the card's business, not this module's.
Pure Python: the vocabulary is passed as a small callable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from backend.core.families import FAMILIES
from backend.core.templates import TEMPLATES, TOKENIZER_TEMPLATE, Template

if TYPE_CHECKING:
    from backend.core.model_card import ModelCard

_MARKER = re.compile(r"<\|[^|<>]+\|>|<s>")


def markers(template: Template) -> list[str]:
    """The special tokens a template writes (BOS first, when it has one)."""
    text = "".join([template.bos or "", template.system_template, template.user_role, template.assistant_role,
                    template.sep])
    return list(dict.fromkeys(_MARKER.findall(text)))


def template_problems(name: str, card: ModelCard, token_id: Callable[[str], int | None]) -> list[str]:
    """Every reason why template ``name`` does not fit the model of ``card``; empty when it fits.

    ``token_id(tok)`` is the id of a single vocabulary token, None when it is not one.
    """
    chat_template = card.tokenizer.chat_template
    if name == TOKENIZER_TEMPLATE:
        return [] if chat_template else ["template 'tokenizer' needs a tokenizer with a chat template; "
                                         "this model's tokenizer has none"]
    if name not in TEMPLATES:
        return [f"unknown template {name!r}; known: {', '.join([*sorted(TEMPLATES), TOKENIZER_TEMPLATE])}"]
    template = TEMPLATES[name]
    problems: list[str] = []
    declared = card.declared_template
    family = FAMILIES.get(card.family or "")
    if isinstance(declared, str) and declared and declared != name:
        problems.append(f"template {name!r} does not match the model: its config.json declares {declared!r}")
    elif not declared and family and name not in family.templates:
        problems.append(f"template {name!r} does not match the model's {family.name} language model "
                        f"(it uses {', '.join(sorted(family.templates))})")
    missing = [m for m in markers(template) if token_id(m) is None]
    if missing:
        problems.append(f"template {name!r} writes {', '.join(missing)}, which the model's tokenizer does not "
                        "have as a token: the model would train on a format it does not know")
    if chat_template:
        # Only the turn markers: some tokenizers' chat templates (older Phi-3) have no system turn.
        turn_markers = _MARKER.findall(template.user_role + template.assistant_role + template.sep)
        absent = [m for m in dict.fromkeys(turn_markers) if m not in chat_template]
        if absent:
            problems.append(f"template {name!r} uses {', '.join(absent)}, which the tokenizer's own chat "
                            "template never writes")
    return problems
