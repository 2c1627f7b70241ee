"""The hard cases of the benchmark-metric reference data (``tests/data/reference/eval_metrics``).

Pure Python, no reference code: ``tools/make_eval_reference.py`` scores these cases with the
benchmarks' own scoring code and commits the cases with the scores. Deterministic (fixed seeds),
so the corpus can be made again and diffed.

Each family is a list of cases; a case is a dict with an ``id`` and what the family's scorer
takes (prediction, answers, options, category, group ...).
"""

from __future__ import annotations

import random

# ------------------------------------------------------------------------------- VQA accuracy
#: surface forms a human annotator or a model writes for the same answer, and near misses
VQA_GROUPS = [
    ["2", "two", "Two", "TWO", "2.", "2.0", "02", " 2 ", "2!", "two.", "(2)", "2 ", "2,"],
    ["yes", "Yes", "YES", "yes.", "Yes!", "yes?", " yes", "yes,", "yes\n", "y", "yeah", "Yes, it is"],
    ["no", "No", "NO", "no.", "No!", "nope", "none", "None", "0", "zero", "not"],
    ["t-shirt", "T-Shirt", "t shirt", "tshirt", "t - shirt", "t-shirts", "T shirt", "t_shirt", "t/shirt"],
    ["3 o'clock", "3 oclock", "3:00", "three oclock", "3 o clock", "3 o'clock.", "3oclock", "oclock", "o'clock"],
    ["don't know", "dont know", "Dont know", "do not know", "dont  know", "don't-know", "i dont know", "idk"],
    ["it's", "its", "it is", "Its", "its'", "it s", "it's.", "itś"],
    ["1,000", "1000", "1,000.", "1.000", "1 000", "one thousand", "1k", "1,000,000", "10,00", "1,0,0,0"],
    ["3.5", "3,5", "3.50", "3.5.", "three and a half", "3 .5", "3. 5", "3½", ".5"],
    ["the dog", "dog", "a dog", "The Dog", "an dog", "dogs", "the  dog", "theDog", "the dog's", "dog's"],
    ["red/blue", "red / blue", "red blue", "redblue", "red-blue", "red and blue", "blue/red", "red, blue"],
    ["e-mail", "email", "e mail", "E-Mail", "e - mail", "e-mails", "(email)", "[email]", "{email}"],
    ["50%", "50 %", "50", "fifty percent", "50 percent", "50%.", "0.5", "%50"],
    ["$5", "5 dollars", "5", "$ 5", "5$", "$5.00", "five dollars", "five"],
    ["u.s.a.", "USA", "u.s.a", "U.S.A.", "usa.", "u s a", "the usa", "U.S.A"],
    ["st. louis", "st louis", "St. Louis", "saint louis", "st.louis", "st . louis", "st.. louis"],
    ["café", "cafe", "CAFÉ", "Café.", "cafe\u0301", "caf\u00e9 "],
    ["straße", "strasse", "STRASSE", "Straße", "STRAẞE"],
    ["日本", "日本。", "日 本", "日本!", "にほん"],
    ["let's go", "lets go", "let's  go", "let us go", "Lets go"],
    ["im", "I'm", "Im", "i'm", "I am", "i m"],
    ["y'all", "yall", "Yall", "y all", "yall'll", "y'allll"],
    ["couldn't've", "couldnt've", "couldn'tve", "couldntve", "could not have"],
    ["somebody'd", "somebodyd", "somebody'd've", "somebodyd've", "somebody would"],
    ["a", "an", "the", "A", "The", "a.", "the the"],
    ["", " ", "\n", "\t", ".", "?", "-", "...", "\u00a0"],
    ["x=1", "x = 1", "x=1.", "x1", "x = 1.0", "x==1"],
    ["+1", "1", "-1", "+ 1", "1+", "- 1"],
    ["<b>", "b", "< b >", "<b", "b>", "@b", "`b`", "\\b", "\"b\"", "'b'"],
    ["ten", "10", "Ten", "10.", "ten.", "tenth", "10th"],
    ["İstanbul", "istanbul", "Istanbul", "ISTANBUL", "i̇stanbul"],
    ["😀", "smile", "😀 smile", ":)"],
    [".." * 20 + "x", "x", "." * 40 + "x", "x" + "." * 40, "." * 33 + "x"],
]


def vqa_cases() -> list[dict]:
    rng = random.Random(23)
    cases: list[dict] = []

    def add(pred: str, answers: list[str], note: str = "") -> None:
        cases.append({"id": f"vqa-{len(cases):03d}", "prediction": pred, "answers": answers, "note": note})

    # hand-made: the examples and the rules of the EvalAI processor one by one
    add("3 oclock", ["3 o'clock"] * 10, "contraction table")
    add("t-shirt", ["t shirt"] * 10, "punctuation next to letters becomes a space")
    add("t - shirt", ["tshirt"] * 10, "punctuation with a space around it is deleted")
    add("2", ["2", "two"] + ["3"] * 8, "2 of 10 humans")
    add("yes", ["yes"] * 3 + ["no"] * 7, "3 of 10")
    add("yes", ["yes"] * 4 + ["no"] * 6, "4 of 10")
    add("Yes.", ["yes"] * 10, "")
    add("1,000", ["1000"] * 10, "commas are removed before the punctuation rule")
    add("." * 40 + "x", ["x"] * 10, "the period rule strips at most 32 periods (re.UNICODE passed as count)")
    add("dont", ["don't"] * 10, "")
    add("Im", ["i'm"] * 10, "the capitalised keys of the contraction table never match")
    add("t-shirt a/-b", ["t shirt a b"] * 10, "each mark's rule is decided on the text before the punctuation step")
    add("t-shirt a/-b", ["tshirt a b"] * 10, "")
    add("", [""] * 10, "empty")
    add("", ["yes"] * 10, "empty prediction")
    # generated: 10 answers drawn from one group (and some from another), a prediction from either
    for _ in range(420):
        g = rng.choice(VQA_GROUPS)
        other = rng.choice(VQA_GROUPS)
        k = rng.choice([0, 1, 2, 3, 4, 5, 7, 10, 10])
        answers = [rng.choice(g) for _ in range(k)] + [rng.choice(other) for _ in range(10 - k)]
        rng.shuffle(answers)
        pred = rng.choice(g) if rng.random() < 0.8 else rng.choice(rng.choice(VQA_GROUPS))
        add(pred, answers)
    # two answers run together with marks between them: each mark's rule reads the whole text
    for _ in range(80):
        a, b = rng.choice(rng.choice(VQA_GROUPS)), rng.choice(rng.choice(VQA_GROUPS))
        sep = rng.choice(["/-", " /", "(-", ";", " - ", "-(", "[", "] ", "=+", "@ ", "_", "!/", "<->", "\\ "])
        pred = a + sep + b
        k = rng.randrange(4)
        add(pred, [pred] * k + [a + " " + b] * 3 + [rng.choice(VQA_GROUPS[0])] * (7 - k))
    return cases


# -------------------------------------------------------------------------------------- ANLS
ANLS_BASES = ["abcd", "invoice", "total amount", "12/03/2019", "$1,250.00", "John Smith", "ab", "a", "xyz corp.",
              "straße", "İstanbul", "naïve café", "日本語テキスト", "0.5", "Q3 2019 revenue", "yes", "N/A",
              "hello world", "the quick brown fox", "ﬁle", "ǅ"]


def _edit(rng: random.Random, s: str, k: int) -> str:
    chars = list(s)
    alphabet = "abcxyz019 .,-ßİé"
    for _ in range(k):
        op = rng.randrange(3)
        if op == 0 and chars:
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        elif op == 1:
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(alphabet))
        elif chars:
            del chars[rng.randrange(len(chars))]
    return "".join(chars)


def _dress(rng: random.Random, s: str) -> str:
    """Case and whitespace that the cleaning removes (and the raw length keeps)."""
    r = rng.random()
    if r < 0.2:
        s = s.upper()
    elif r < 0.3:
        s = s.title()
    r = rng.random()
    if r < 0.2:
        s = "  " + s + "   "
    elif r < 0.3:
        s = s.replace(" ", "   ")
    elif r < 0.35:
        s = "\n" + s + "\t"
    return s


def anls_cases() -> list[dict]:
    rng = random.Random(2319)
    cases: list[dict] = []

    def add(pred: str, answers: list[str], note: str = "") -> None:
        cases.append({"id": f"anls-{len(cases):03d}", "prediction": pred, "answers": answers, "note": note})

    add("abxx", ["abcd"], "distance 2 over 4 = exactly 0.5: the script keeps 0.5, the paper gives 0")
    add("ax", ["ab"], "1/2 = 0.5")
    add("abcx", ["abcd"], "")
    add("  abxx  ", ["abcd"], "2 over the raw length 8: 0.75, where the cleaned length 4 gives 0.5")
    add("ABXX", ["abcd"], "")
    add("", [""], "both empty")
    add("", ["abc"], "")
    add("   ", [""], "raw length 3, cleaned both empty")
    add("STRASSE", ["straße"], "upper() lengthens ß")
    add("helo", ["world", "hello"], "the best answer counts")
    add("x", ["", "x"], "")
    for _ in range(430):
        base = rng.choice(ANLS_BASES)
        k = rng.choice([0, 0, 1, 1, 2, 2, 3, 4, 6])
        pred = _dress(rng, _edit(rng, base, k))
        answers = [_dress(rng, base)]
        if rng.random() < 0.3:
            answers.append(_dress(rng, _edit(rng, rng.choice(ANLS_BASES), rng.randrange(3))))
        add(pred, answers)
    return cases


# ---------------------------------------------------------------------------- relaxed accuracy
NUMBER_FORMS = ["{v}", "{v}%", "{v} %", "{v}.", " {v} ", "{v}\n", "${v}", "{v}$", "{v} million", "{v}k", "+{v}",
                "%{v}", "{v}%%", "{v}e0", "{v}0"]


def relaxed_cases() -> list[dict]:
    rng = random.Random(55)
    cases: list[dict] = []

    def add(pred: str, gold: str | list[str], note: str = "") -> None:
        answers = gold if isinstance(gold, list) else [gold]
        cases.append({"id": f"relaxed-{len(cases):03d}", "prediction": pred, "answers": answers, "note": note})

    add("5%", "5", "a % reads as /100: 0.05 vs 5")
    add("5%", "0.05", "")
    add("0.0", "0", "a zero target compares the strings")
    add("0", "0", "")
    add("105.2", "100", "5.2% of the target, 4.9% of the prediction: InternVL's swapped call accepts it")
    add("95.3", "100", "")
    add("95.2", "100", "")
    add("104.9", "100", "")
    add("105", "100", "exactly 5%")
    add("1,000", "1000", "a comma is not a number for float()")
    add("1_000", "1000", "float() reads underscores")
    add("nan", "nan", "")
    add("inf", "inf", "")
    add("1e3", "1000", "")
    add("٣", "3", "float() reads other scripts' digits")
    add("Yes", "yes", "text: case-insensitive equality")
    add(" yes ", "yes", "the prediction is stripped")
    add("yes", " yes", "the target is not")
    add("", "", "")
    add("-5", "5", "")
    add("-0", "0", "")
    add("12", ["10", "12.3"], "several answers: the best counts")
    for _ in range(420):
        r = rng.random()
        if r < 0.7:
            gold_v = rng.choice([0, 1, 5, 10, 12.5, 100, 0.05, 3.14159, 1000, -20, 2019, 0.001, 45, 99.9])
            rel = rng.choice([0, 0.01, 0.0476, 0.049, 0.05, 0.0501, 0.0526, 0.06, 0.1, -0.05, -0.0476, -0.049, 1])
            pred_v = gold_v * (1 + rel)
            fmt_g = rng.choice(NUMBER_FORMS[:5] + ["{v}"] * 6)
            fmt_p = rng.choice(NUMBER_FORMS + ["{v}"] * 6)
            pv = rng.choice([f"{pred_v:g}", f"{pred_v:.2f}", f"{round(pred_v, 3)}", str(pred_v)])
            add(fmt_p.format(v=pv), fmt_g.format(v=f"{gold_v:g}"))
        else:
            words = ["Yes", "no", "Blue", "blue ", "2019", "twenty", "N/A", "", "Canada", "canada", "ÉTÉ", "été",
                     "Ǆ", "ǆ", "ΣΑΣ", "σας"]
            add(rng.choice(words), rng.choice(words))
    return cases


# --------------------------------------------------------------------------- multiple choice
OPTION_SETS = [
    {"A": "dog", "B": "cat", "C": "bird", "D": "fish"},
    {"A": "1", "B": "2", "C": "3", "D": "4"},
    {"A": "cat", "B": "cats", "C": "a cat", "D": "no cat"},
    {"A": "red", "B": "blue"},
    {"A": "A", "B": "B", "C": "C"},
    {"A": "The man is walking a dog in the park", "B": "The woman is riding a bike", "C": "Nobody is there",
     "D": "A dog is sleeping"},
    {"A": "苹果", "B": "香蕉", "C": "橙子", "D": "葡萄"},
    {"A": "yes", "B": "no"},
    {"A": "left", "B": "right", "C": "top", "D": "bottom", "E": "center"},
    {"A": "Z", "B": "Y"},
    {"A": "increase", "B": "decrease", "C": "remain the same"},
]

CHOICE_FORMS = [
    "{L}", "{l}", "({L})", "{L}.", "{L})", "[{L}]", "**{L}**", "{L}: {T}", "{L}. {T}", "({L}) {T}", "{T}", "{t}",
    "Answer: {L}", "The answer is {L}", "The answer is {L}.", "The correct answer is **{L}**.",
    "the answer is {l}", "answer is ({L})", "I think {L}", "{L} because it is {T}", "{L}\n", " {L} ", "#{L}",
    "{{{L}}}", "Option {L} is wrong; the answer is {M}.", "{L} or {M}", "{L} {M}", "Not {L}", "{L}, {T}",
    "It is {T}.", "It is a {t}", "The image shows {T} clearly and the answer is therefore {L}",
    "Looking at the picture carefully, {L} seems right, but let me think again about all of it",
    "{L}{L}", "{L}.{M}", "Z", "", "None of the above", "Cannot determine the answer", "I can't process this file.",
    "{T} and {U}", "Both {L} and {M}", "{L} is the answer", "选{L}", "答案是{L}", "{L}。",
]


def _render(form: str, options: dict, rng: random.Random) -> str:
    letters = list(options)
    L, M = rng.sample(letters, 2) if len(letters) > 1 else (letters[0], letters[0])
    return form.format(L=L, l=L.lower(), M=M, T=options[L], t=str(options[L]).lower(), U=options[M])


def choice_cases() -> list[dict]:
    rng = random.Random(1234)
    cases: list[dict] = []

    def add(pred: str, options: dict, answer: str, note: str = "") -> None:
        cases.append({"id": f"choice-{len(cases):03d}", "prediction": pred, "options": options, "answer": answer,
                      "note": note})

    dogs = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    add("2", OPTION_SETS[1], "B", "an option text of one character")
    add("Option A is wrong; the answer is B.", dogs, "B", "")
    add("B because it barks", dogs, "B", "")
    add("b", dogs, "B", "a lone lowercase letter")
    add("A dog", dogs, "B", "'A' is an article here")
    add("A", dogs, "A", "")
    for _ in range(440):
        options = rng.choice(OPTION_SETS)
        add(_render(rng.choice(CHOICE_FORMS), options, rng), options, rng.choice(list(options)))
    return cases


def circular_cases() -> list[dict]:
    """MMBench circular groups: the same question with its options rotated; ``index`` >= 1e6 marks
    a rotation of question ``index % 1e6`` (the layout of MMBench's TSV files)."""
    rng = random.Random(77)
    groups = []
    for g in range(60):
        base = rng.choice([s for s in OPTION_SETS if len(s) >= 2])
        texts = list(base.values())
        n = len(texts)
        right = rng.randrange(n)
        rows = []
        for r in range(min(n, 4)):
            rotated = texts[r:] + texts[:r]
            options = {chr(65 + i): t for i, t in enumerate(rotated)}
            answer = chr(65 + rotated.index(texts[right]))
            if rng.random() < 0.8:
                form = rng.choice(["{L}", "({L})", "{L}. {T}", "The answer is {L}", "{T}", "{l}"])
                letter = answer if rng.random() < 0.8 else rng.choice(list(options))
                pred = form.format(L=letter, l=letter.lower(), T=options[letter])
            else:
                pred = _render(rng.choice(CHOICE_FORMS), options, rng)
            rows.append({"index": g + 1 + r * 1_000_000, "prediction": pred, "options": options, "answer": answer})
        if g % 12 == 11:
            rows = rows[1:]  # the unrotated question missing (cut by a limit): the group is not counted
        groups.append({"id": f"circular-{g:03d}", "rows": rows})
    return groups


# -------------------------------------------------------------------------------- POPE / MME
YES_NO = ["Yes", "No", "yes", "no", "Yes.", "No.", "No, there is not.", "Yes, there is a dog.", "There is no dog.",
          "not sure", "NO", "Nope", "YES", "I don't think so.", "no\nthere is none", "", "yes,no", "There are no cats",
          "Not", "nothing", "No there is", "Yes. No.", "It is not.", "no.", " no", "no ", "yes\n", "Yes, not really",
          "absolutely", "n", "y", "No!", "no,", "noo", "Is not", "none", "True", "False", "是", "不是", "否",
          "是的", "ye", "nah", "The answer is no", "yes sir", "Notably yes", "yes\tno", "\nyes", "No dog.",
          "I yes", "ok no", "is yes", "Ok, no", "..no", "a no", "so yes", "¿no?", "It's no", "Yo yes"]


def pope_cases() -> list[dict]:
    """Runs of POPE: every category (adversarial, popular, random) with labels and replies."""
    rng = random.Random(99)
    runs = []
    for r in range(6):
        rows = []
        for cat in ("adversarial", "popular", "random"):
            for _ in range(rng.randrange(20, 40)):
                rows.append({"category": cat, "label": rng.choice(["yes", "no"]), "prediction": rng.choice(YES_NO)})
            # both labels and a 'yes' prediction on a 'yes' label, so that precision and recall are defined
            rows.append({"category": cat, "label": "yes", "prediction": "Yes"})
            rows.append({"category": cat, "label": "no", "prediction": "No"})
        rng.shuffle(rows)
        runs.append({"id": f"pope-{r}", "rows": rows})
    return runs


MME_TASKS = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
             "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]


def mme_cases() -> list[dict]:
    """Runs of MME: every subtask, images with two questions (a 'yes' and a 'no' one)."""
    rng = random.Random(7)
    runs = []
    for r in range(5):
        rows = []
        for task in MME_TASKS:
            for i in range(rng.randrange(3, 9)):
                for label in ("Yes", "No"):
                    pred = rng.choice(YES_NO) if rng.random() < 0.7 else label
                    if r == 0 and "\t" in pred:
                        pred = "yes"  # run 0 has no tab: the one difference is shown in the other runs
                    rows.append({"category": task, "image": f"{task}_{i}.jpg", "label": label, "prediction": pred})
        runs.append({"id": f"mme-{r}", "rows": rows})
    return runs


# ------------------------------------------------------------------------------------ OCRBench
OCR_CATEGORIES = ["Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                  "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
                  "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
                  "Handwritten Mathematical Expression Recognition"]
OCR_PAIRS = [
    (["STOP"], ["stop", "STOP", "The sign says STOP.", "st op", "ST\nOP", "top", "", "Stop sign"]),
    (["Coca Cola", "coca-cola"], ["coca cola", "Coca-Cola", "COCA COLA zero", "cocacola", "Pepsi"]),
    (["x ^ { 2 } + 1"], ["x^{2}+1", "x ^ {2} + 1", "$x^{2}+1$", "x^2+1", "X^{2}+1"]),
    (["\\frac { a } { b }"], ["\\frac{a}{b}", "\\frac {a}{b}", "a/b", "\\frac{ a }{ b } = c"]),
    (["1234567"], ["1234567", "1 234 567", "12345678", "123456", "No: 1234567."]),
    ([""], ["anything", ""]),
    (["Straße"], ["strasse", "STRASSE", "straße", "Die Straße"]),
    (["2019-03-12"], ["2019-03-12", "12/03/2019", "2019 - 03 - 12"]),
    (["$1,250.00"], ["$1,250.00", "1250", "$1,250", "total: $1,250.00"]),
    (["line one\nline two"], ["line one line two", "line one\nline two", "LINE ONE LINE TWO"]),
    (["  padded  "], ["padded", " padded ", "unpadded"]),
    (["ǅ"], ["ǆ", "Ǆ", "dž"]),
]


def ocrbench_cases() -> list[dict]:
    rng = random.Random(1000)
    rows = []
    for i in range(320):
        answers, preds = rng.choice(OCR_PAIRS)
        rows.append({"id": f"ocr-{i:03d}", "category": rng.choice(OCR_CATEGORIES), "answers": answers,
                     "prediction": rng.choice(preds)})
    return rows


FAMILIES = {"vqa": vqa_cases, "anls": anls_cases, "relaxed": relaxed_cases, "choice": choice_cases,
            "circular": circular_cases, "pope": pope_cases, "mme": mme_cases, "ocrbench": ocrbench_cases}
