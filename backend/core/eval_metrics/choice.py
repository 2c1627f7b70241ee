"""Multiple choice (MMBench, AI2D, ScienceQA, SEED): the rule-based option extraction of
VLMEvalKit (``can_infer`` under its ``exact_matching`` policy: no LLM judge, a reply the rules
cannot read is wrong) and MMBench's circular evaluation."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: replies VLMEvalKit reads as a refusal ('Z': no option)
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
_SEPARATORS = ".()[],:;!*#{}"
#: "The correct answer is **B**", "the answer is c" (letters A-D only, as the reference)
_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
#: the choices of a record without options: MMBench's letters
DEFAULT_LETTERS = "ABCDE"


def choices_of(options: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``{"A": text, ...}`` from a list of option texts (lettered in order) or a letter mapping."""
    if options is None:
        return {c: "" for c in DEFAULT_LETTERS}
    if isinstance(options, Mapping):
        return {str(k): str(v) for k, v in options.items()}
    return {chr(65 + i): str(o) for i, o in enumerate(options)}


def _option_letter(reply: str, choices: Mapping[str, str]) -> str | None:
    if "Failed to obtain answer via API" in reply:
        return None
    if any(r in reply for r in REFUSALS):
        return "Z"
    spaced = reply
    for c in _SEPARATORS:
        spaced = spaced.replace(c, " ")
    words = spaced.split()
    present = [c for c in choices if c in words]
    if len(present) == 1:
        # one option letter among the words, and among the last four of them
        if words.index(present[0]) > len(words) - 5:
            return present[0]
    elif not present and "Z" in words:
        return "Z"
    m = _VERBOSE.search(reply)
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def _option_text(reply: str, choices: Mapping[str, str]) -> str | None:
    reply = reply.lower()
    if len(reply) > 2 * sum(len(v) for v in choices.values()):
        return None
    hits = [k for k, v in choices.items() if v.lower() in reply]
    return hits[0] if len(hits) == 1 else None


def extract_choice(prediction: str, options: Sequence[str] | Mapping[str, str] | None = None) -> str | None:
    """The option a reply picks: a letter, ``Z`` (a refusal or "Z"), or None (unreadable).
    First the letters (one option letter among the reply's words, near its end; a refusal;
    "the answer is X"), then the option texts (exactly one contained in a reply at most twice as
    long as all the options together)."""
    choices = choices_of(options)
    return _option_letter(str(prediction), choices) or _option_text(str(prediction), choices)


def answer_letter(answer: str, choices: Mapping[str, str]) -> str:
    """The answer as a letter: itself, or (an answer given as option text) its option's."""
    want = answer.strip().strip("()").upper()
    if want in choices:
        return want
    texts = [k for k, v in choices.items() if " ".join(v.lower().split()) == " ".join(answer.lower().split())]
    return texts[0] if texts else want


def multiple_choice(prediction: str, answers: Sequence[str],
                    options: Sequence[str] | Mapping[str, str] | None = None) -> float:
    choices = choices_of(options)
    got = extract_choice(prediction, choices)
    return float(got is not None and any(got == answer_letter(a, choices) for a in answers))


def circular_accuracy(rows: Sequence[Mapping]) -> float:
    """MMBench's circular evaluation: a question counts only if the model is right on every
    rotation of its options. Rows carry ``scores["mmbench_circular"]`` (or ``multiple_choice``) and
    ``meta["group"]`` (the question: MMBench's ``index % 1e6``) and ``meta["main"]`` (the
    unrotated row); a group is counted when its unrotated row is there (as VLMEvalKit does)."""
    groups: dict[str, list[bool]] = {}
    mains: set[str] = set()
    for r in rows:
        meta = r.get("meta") or {}
        g = str(meta.get("group", r.get("id")))
        scores = r.get("scores") or {}
        hit = scores.get("mmbench_circular", scores.get("multiple_choice", 0.0))
        groups.setdefault(g, []).append(bool(hit))
        if meta.get("main", True):
            mains.add(g)
    counted = [all(hits) for g, hits in groups.items() if g in mains]
    return sum(counted) / len(counted) if counted else 0.0
