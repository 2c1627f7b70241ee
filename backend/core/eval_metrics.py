"""Evaluation metrics of the benchmark formats, as pure functions of (prediction, answers).

Each per-sample function returns a score in [0, 1]; a dataset's metric is the mean.
``answers`` is the list of acceptable ground truths (one for the seed's JSONL format; ten
for VQAv2/TextVQA-style annotations).

- exact match: normalised strings equal (case, surrounding space and final period ignored).
- VQA accuracy: the VQAv2 normalisation (punctuation, articles, number words, contractions)
  and ``min(1, #matching answers / 3)``, averaged over the 10 leave-one-out subsets of the
  human answers as the official script does (equals the plain formula with < 10 answers
  only when every answer is distinct; see the tests).
- ANLS (DocVQA): ``1 - normalised Levenshtein distance`` of the closest answer, zeroed
  when it is >= 0.5 (threshold ``tau``).
- relaxed accuracy (ChartQA): numbers within 5% relative error, otherwise exact match;
  a trailing ``%`` is ignored on both sides.
- multiple choice (AI2D/MMBench): the option letter extracted from a free-form reply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

METRICS = ("exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice")


# ------------------------------------------------------------------------------- exact match
def normalise_basic(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".").strip()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalise_basic(prediction)
    return float(any(p == normalise_basic(a) for a in answers))


# ------------------------------------------------------------------------------ VQA accuracy
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "isnt": "isn't", "its": "it's", "shouldnt": "shouldn't", "wasnt": "wasn't", "werent": "weren't",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "theyre": "they're", "whats": "what's",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalise_vqa(text: str) -> str:
    """The VQAv2 evaluation's answer processing (punctuation, then digits/articles/contractions)."""
    out = text.replace("\n", " ").replace("\t", " ").strip().lower()
    for p in _PUNCT:
        if (p + " " in out or " " + p in out) or re.search(_COMMA_STRIP, out) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = []
    for w in out.split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    p = normalise_vqa(prediction)
    gts = [normalise_vqa(a) for a in answers]
    if len(gts) <= 1:
        return float(bool(gts) and p == gts[0])
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        scores.append(min(1.0, sum(g == p for g in others) / 3))
    return sum(scores) / len(scores)


# ------------------------------------------------------------------------------------- ANLS
def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], tau: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one sample (DocVQA's definition)."""
    p = " ".join(prediction.strip().lower().split())
    best = 0.0
    for a in answers:
        g = " ".join(a.strip().lower().split())
        if not p and not g:
            return 1.0
        nl = levenshtein(p, g) / max(len(p), len(g))
        best = max(best, 1 - nl if nl < tau else 0.0)
    return best


# ------------------------------------------------------------------------- relaxed accuracy
def _to_float(text: str) -> float | None:
    t = text.strip().replace(",", "").rstrip(".")
    if t.endswith("%"):
        t = t[:-1].strip()
    try:
        return float(t)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers: Sequence[str], tolerance: float = 0.05) -> float:
    """ChartQA: numeric answers within ``tolerance`` relative error, others by exact match."""
    p = _to_float(prediction)
    for a in answers:
        g = _to_float(a)
        if p is not None and g is not None:
            if g == 0:
                if p == 0:
                    return 1.0
            elif abs(p - g) / abs(g) <= tolerance:
                return 1.0
        elif normalise_basic(prediction) == normalise_basic(a):
            return 1.0
    return 0.0


# ------------------------------------------------------------------------- multiple choice
_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-Za-z])\)?\.?\s*$"),  # "B", "(b)", "B."
    re.compile(r"^\s*\(?([A-Z])[\).:,]"),  # "B. cat", "(B) cat", "B: cat"
    re.compile(r"\b(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([A-Z])\b"),  # "the answer is C"
    re.compile(r"\(([A-Z])\)"),  # "... (C) ..."
]


def extract_choice(prediction: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-form reply picks, or None. Tries, in order: a lone letter,
    a leading letter, "the answer is X", a parenthesised letter, then (with ``options``)
    the one option whose text the reply contains."""
    for pat in _LETTER_PATTERNS:
        m = pat.search(prediction)
        if m:
            letter = m.group(1).upper()
            if options is None or ord(letter) - 65 < len(options):
                return letter
    if options:
        low = prediction.lower()
        hits = [chr(65 + i) for i, o in enumerate(options) if o and o.lower() in low]
        if len(hits) == 1:
            return hits[0]
    return None


def multiple_choice(prediction: str, answers: Sequence[str], options: Sequence[str] | None = None) -> float:
    """``answers`` holds the correct letter (or the correct option's text, with ``options``)."""
    got = extract_choice(prediction, options)
    if got is None:
        return 0.0
    for a in answers:
        want = a.strip().upper().strip("()")
        if len(want) != 1 and options:
            matches = [chr(65 + i) for i, o in enumerate(options) if normalise_basic(o) == normalise_basic(a)]
            want = matches[0] if matches else want
        if got == want:
            return 1.0
    return 0.0


SCORERS: dict[str, Callable[..., float]] = {
    "exact_match": exact_match, "vqa_accuracy": vqa_accuracy, "anls": anls,
    "relaxed_accuracy": relaxed_accuracy, "multiple_choice": multiple_choice,
}


def score(metric: str, prediction: str, answers: Sequence[str], options: Sequence[str] | None = None) -> float:
    if metric not in SCORERS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if metric == "multiple_choice":
        return multiple_choice(prediction, answers, options)
    return SCORERS[metric](prediction, answers)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
