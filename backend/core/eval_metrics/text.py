"""Free-text answers: exact match, VQA accuracy, ANLS, relaxed accuracy.

Each function scores one sample, ``prediction`` against the acceptable ``answers``, exactly as the
benchmark's official scoring code does (``tests/eval/test_metrics_reference.py`` checks it case by
case against the reference data of ``tools/make_eval_reference.py``; docs/evaluation.md lists
the deliberate differences).
"""

from __future__ import annotations

import re
from collections.abc import Sequence


# ------------------------------------------------------------------------------- exact match
def normalise_basic(text: str) -> str:
    """Lower case, whitespace folded, one final period dropped (the studio's own metric)."""
    out = " ".join(text.lower().split())
    return out[:-1].rstrip() if out.endswith(".") else out


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalise_basic(prediction)
    return float(any(p == normalise_basic(a) for a in answers))


# ------------------------------------------------------------------------------ VQA accuracy
# The EvalAI answer processor of VQAv2/TextVQA (as InternVL's eval/vqa/textvqa_eval.py runs it).
# Contractions written without the apostrophe, then their spelling; applied to lower-cased words,
# so the table's capitalised keys (Id've, Im, Ive) never match there either.
_CONTRACTION_TEXT = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've|
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't|
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's|isnt isn't|
itd it'd|itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|
mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|
oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|
she'dve she'd've|she's she's|shouldve should've|shouldnt shouldn't|shouldnt've shouldn't've|
shouldn'tve shouldn't've|somebody'd somebodyd|somebodyd've somebody'd've|somebody'dve somebody'd've|
somebodyll somebody'll|somebodys somebody's|someoned someone'd|someoned've someone'd've|someone'dve someone'd've|
someonell someone'll|someones someone's|somethingd something'd|somethingd've something'd've|
something'dve something'd've|somethingll something'll|thats that's|thered there'd|thered've there'd've|
there'dve there'd've|therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've|
theyll they'll|theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|
werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|whered where'd|
wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's|
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't|
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll|yall'd've y'all'd've|
y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've|you'dve you'd've|youll you'll|
youre you're|youve you've"""
CONTRACTIONS = dict(pair.split() for pair in _CONTRACTION_TEXT.replace("\n", "").split("|"))
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
#: a period not followed by a digit ("3.5" keeps its point)
_PERIOD = re.compile(r"\.(?!\d)")
#: the processor passes ``re.UNICODE`` (32) where ``re.sub`` takes its count: at most 32 periods go
_PERIOD_COUNT = 32


def normalise_vqa(text: str) -> str:
    """The EvalAI answer processor: lower case, commas and ``?`` removed, ``'s`` split off; each
    punctuation mark deleted where the text (as it was before this step) has it next to a space,
    else replaced by a space; periods not before a digit dropped; number words to digits,
    articles dropped, contractions spelled with their apostrophe."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in PUNCTUATION:
        # The official rule also deletes when a comma sits between digits; commas are gone by now.
        out = out.replace(p, "" if (p + " " in text or " " + p in text) else " ")
    out = _PERIOD.sub("", out, count=_PERIOD_COUNT)
    words = [NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2/TextVQA: ``min(1, matches among the other answers / 3)`` averaged over leaving out
    each human answer in turn (ten answers in the benchmarks). With one answer (the studio's own
    splits), normalised exact match: leave-one-out would leave nothing to match."""
    p = normalise_vqa(prediction)
    gts = [normalise_vqa(a) for a in answers]
    if len(gts) <= 1:
        return float(bool(gts) and p == gts[0])
    if p not in gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        matching = sum(1 for j, g in enumerate(gts) if j != i and g == p)
        accs.append(min(1, float(matching) / 3))
    return sum(accs) / len(accs)


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


def _clean(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], tau: float = 0.5) -> float:
    """DocVQA/InfoVQA's official script: the edit distance of the cleaned strings (case,
    surrounding and repeated whitespace) over the longer **raw** string (upper-cased, as the
    script measures it), ``1 -`` the smallest over the answers, zeroed below ``tau`` (a score of
    exactly ``tau`` is kept, where the ANLS paper gives 0)."""
    if not answers:
        return 0.0
    det = _clean(prediction)
    values = []
    for a in answers:
        length = max(len(a.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(levenshtein(_clean(a), det)) / float(length))
    result = 1 - min(values)
    return 0.0 if result < tau else result


# ------------------------------------------------------------------------- relaxed accuracy
def _to_float(text: str) -> float | None:
    """Python's float() (so ``1_000``, ``1e3``, ``nan`` and other scripts' digits are numbers,
    ``1,000`` and ``$5`` are not); a final ``%`` divides by 100."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, tolerance: float = 0.05) -> bool:
    """ChartQA (pix2struct's definition): within ``tolerance`` of a non-zero numeric target,
    relative to the target; otherwise case-insensitive equality of the strings (so a zero
    target needs the same spelling: ``0.0`` is not ``0``)."""
    p, t = _to_float(prediction), _to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str], tolerance: float = 0.05) -> float:
    """The best answer counts; the prediction is stripped (as InternVL's ChartQA script does)."""
    p = prediction.strip()
    return float(any(relaxed_correctness(a, p, tolerance) for a in answers))
