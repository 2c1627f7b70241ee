"""Readers of the benchmarks' release layouts (those of InternVL's evaluation guide): each turns
a benchmark folder into the studio's evaluation records, with the prompt exactly as the guide's
script builds it. Every problem is collected with its file, line and field; nothing is written
here (``register`` writes, all or nothing).

A record: ``{"id", "image", "conversations": [human prompt, gpt first answer], "answers",
"options"?, "category"?, "group"?, "main"?}``; ``image`` is absolute (in the layout) or, for an
image the layout carried as base64, relative to the registered folder (``images/...``).
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.core.benchmarks.catalog import SHORT, Benchmark

MME_SUBTASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_OPTION_LINE = re.compile(r"^([A-Z])\. (.*)$")


class Problems:
    def __init__(self, folder: Path) -> None:
        self.folder, self.items = folder, []

    def add(self, file: Path | str, line: int | None, field: str | None, message: str) -> None:
        rel = str(Path(file).relative_to(self.folder)) if Path(file).is_absolute() else str(file)
        self.items.append({"file": rel, "line": line, "field": field, "message": message})


class Images:
    """Images found in the layout (a path in the folder) or carried in it (base64, decoded into
    the registered folder's ``images/``)."""

    def __init__(self, folder: Path, out: Path, problems: Problems) -> None:
        self.folder, self.out, self.problems = folder, out, problems

    def path(self, rel: str, file: Path, line: int | None, field: str = "image", base: Path | None = None) -> str | None:
        """An image path as the scripts join it; a path that starts with the guide's ``data/<name>/``
        prefix also resolves from the benchmark folder itself. Returns the absolute path (the
        registered benchmark reads its images where the layout keeps them)."""
        base = base or self.folder
        parts = Path(rel).parts
        for k in range(len(parts)):
            cand = base.joinpath(*parts[k:])
            if cand.is_file():
                return str(cand)
        self.problems.add(file, line, field, f"image {rel!r} not found under {base}")
        return None

    def decode(self, b64: str, name: str, file: Path, line: int, field: str = "image") -> str | None:
        from PIL import Image

        try:
            data = base64.b64decode(b64, validate=False)
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
                ext = (im.format or "img").lower()
        except (binascii.Error, ValueError, OSError) as e:
            self.problems.add(file, line, field, f"not a base64-encoded image ({type(e).__name__}: {e})")
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        target = self.out / f"{name}.{ext}"
        target.write_bytes(data)
        return f"images/{target.name}"


def record(sid: Any, image: str | None, prompt: str, answers: list[str], **extra: Any) -> dict:
    rec = {"id": str(sid), "image": image, "conversations": [
        {"from": "human", "value": prompt}, {"from": "gpt", "value": answers[0] if answers else ""}],
        "answers": answers}
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def _jsonl(path: Path, problems: Problems) -> list[tuple[int, dict]]:
    if not path.is_file():
        problems.add(path, None, None, "missing: the layout needs this file")
        return []
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.add(path, n, None, f"not JSON: {e.msg}")
                continue
            if not isinstance(obj, dict):
                problems.add(path, n, None, "not a JSON object")
                continue
            rows.append((n, obj))
    return rows


def _need(obj: dict, keys: tuple[str, ...], path: Path, n: int, problems: Problems) -> bool:
    missing = [k for k in keys if obj.get(k) in (None, "")]
    for k in missing:
        problems.add(path, n, k, f"missing field {k!r}")
    return not missing


def _suffixed(question: str, b: Benchmark) -> str:
    return question + b.joiner + b.suffix if b.suffix else question


# ------------------------------------------------------------------------------- VQA family
def read_vqa_jsonl(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """evaluate_vqa.py: ``{"image", "question", "question_id", "answer"}`` lines; the prompt is
    ``question + ' ' + suffix``; answers in the line (a string or a list), or (VQAv2, TextVQA) the
    ten human answers of the annotation file's ``annotations[].answers[].answer``."""
    path = folder / b.files["questions"]
    by_qid: dict[Any, list[str]] = {}
    if "annotations" in b.files:
        ann_path = folder / b.files["annotations"]
        try:
            anns = json.loads(ann_path.read_text(encoding="utf-8"))["annotations"]
            by_qid = {a["question_id"]: [str(x["answer"]) for x in a["answers"]] for a in anns}
        except FileNotFoundError:
            problems.add(ann_path, None, None, "missing: the layout needs this file")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            problems.add(ann_path, None, "annotations", f"not an annotation file ({type(e).__name__}: {e})")
    out = []
    for n, obj in _jsonl(path, problems):
        if not _need(obj, ("image", "question", "question_id"), path, n, problems):
            continue
        if "annotations" in b.files:
            answers = by_qid.get(obj["question_id"])
            if answers is None and by_qid:
                problems.add(path, n, "question_id", f"question {obj['question_id']!r} is not in {b.files['annotations']}")
        else:
            raw = obj.get("answer")
            answers = [str(a) for a in raw] if isinstance(raw, list) else None if raw is None else [str(raw)]
            if answers is None:
                problems.add(path, n, "answer", "missing field 'answer' (a test split without answers cannot be scored)")
        image = images.path(obj["image"], path, n)
        if answers is None or image is None:
            continue
        options = None
        if "multiple_choice" in b.metrics:  # AI2D: the options are lines of the question
            options = {m.group(1): m.group(2) for m in map(_OPTION_LINE.match, obj["question"].split("\n")) if m}
        out.append(record(obj["question_id"], image, _suffixed(obj["question"], b), answers, options=options))
    return out


# ----------------------------------------------------------------------- multiple choice
def read_mmbench_tsv(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """evaluate_mmbench.py: a TSV read with pandas; the prompt is ``hint\\n`` (if any) + question,
    ``\\nX. option`` for each option A-E present, then ``\\n`` + suffix; images base64 in ``image``
    (an index instead of an image: the image of that row, as VLMEvalKit's files do). Rows with
    ``index`` >= 1,000,000 are rotations of question ``index % 1,000,000`` (circular evaluation)."""
    import pandas as pd

    path = folder / b.files["questions"]
    if not path.is_file():
        problems.add(path, None, None, "missing: the layout needs this file")
        return []
    try:
        df = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        m = re.search(r"in line (\d+)", str(e))
        problems.add(path, int(m.group(1)) if m else None, None, f"not a TSV file ({str(e).strip()})")
        return []
    for col in ("index", "question", "answer", "image"):
        if col not in df.columns:
            problems.add(path, None, col, f"missing column {col!r}")
    if problems.items:
        return []
    by_index = {str(i): str(im) for i, im in zip(df["index"], df["image"], strict=True)}
    out = []
    for k in range(len(df)):
        row, line = df.iloc[k], k + 2  # the header is line 1

        def get(key: str, row=row):  # noqa: ANN001, ANN202 - the script's load_from_df
            return row[key] if key in row and not pd.isna(row[key]) else None
        index = int(row["index"])
        if get("answer") is None:
            problems.add(path, line, "answer", "missing answer (a test split without answers cannot be scored)")
            continue
        options = {c: get(c) for c in "ABCDE" if get(c) is not None}
        question = str(row["question"])
        if get("hint") is not None:
            question = f"{get('hint')}\n{question}"
        for key, item in options.items():
            question += f"\n{key}. {item}"
        question += "\n" + b.suffix
        img = str(row["image"])
        if len(img) < 64 and img in by_index:  # a reference to another row's image
            img = by_index[img]
        image = images.decode(img, str(index), path, line)
        if image is None:
            continue
        out.append(record(index, image, question, [str(get("answer"))], options={k: str(v) for k, v in options.items()},
                          category=get("category"), group=index % 1_000_000, main=index < 1_000_000))
    return out


def read_scienceqa_jsonl(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """evaluate_scienceqa.py: ``{"image", "hint", "question", "choices", "answer": index}``; the
    prompt is hint + question + ``X. choice`` lines + suffix, joined by newlines and stripped."""
    path = folder / b.files["questions"]
    out = []
    for n, obj in _jsonl(path, problems):
        if not _need(obj, ("image", "question", "choices"), path, n, problems):
            continue
        choices = obj["choices"]
        letters = "ABCDE"
        if not isinstance(choices, list) or not 1 <= len(choices) <= len(letters):
            problems.add(path, n, "choices", "expected a list of 1 to 5 choices")
            continue
        ans = obj.get("answer")
        if not isinstance(ans, int) or not 0 <= ans < len(choices):
            problems.add(path, n, "answer", f"expected the index of a choice (0-{len(choices) - 1}), got {ans!r}")
            continue
        question = obj["question"]
        if obj.get("hint"):
            question = obj["hint"] + "\n" + question
        question += "\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
        question += "\n" + b.suffix
        image = images.path(obj["image"], path, n)
        if image is None:
            continue
        out.append(record(obj.get("id", n), image, question.strip(), [letters[ans]],
                          options={letters[i]: str(c) for i, c in enumerate(choices)}))
    return out


def read_seed_jsonl(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """evaluate_seed.py: ``{"image", "text", "question_id", "answer"}``; the prompt is ``text``
    as it is (it carries the options and the instruction); the options are its ``X. ...`` lines."""
    path = folder / b.files["questions"]
    out = []
    for n, obj in _jsonl(path, problems):
        if not _need(obj, ("image", "text", "question_id", "answer"), path, n, problems):
            continue
        options = {m.group(1): m.group(2) for m in map(_OPTION_LINE.match, obj["text"].split("\n")) if m}
        if not options:
            problems.add(path, n, "text", "no options ('A. ...' lines) in the question")
            continue
        image = images.path(obj["image"], path, n)
        if image is not None:
            out.append(record(obj["question_id"], image, obj["text"], [str(obj["answer"])], options=options,
                              category=obj.get("question_type_id")))
    return out


# ----------------------------------------------------------------------------- yes / no
def read_pope(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """evaluate_pope.py + eval_pope.py: questions ``{"question_id", "image", "text", "category"}``
    (the text carries the LLaVA suffix, which the script replaces by its own, the same), images in
    ``val2014/``; labels from ``coco/coco_pope_<category>.json``, paired in order within each
    category (as eval_pope.py pairs them)."""
    path = folder / b.files["questions"]
    rows = _jsonl(path, problems)
    labels: dict[str, list[str]] = {}
    for cat in sorted({str(o.get("category")) for _, o in rows if o.get("category")}):
        lab_path = folder / b.files["labels"] / f"coco_pope_{cat}.json"
        labels[cat] = [str(o.get("label", "")) for _, o in _jsonl(lab_path, problems)]
    seen: dict[str, int] = {}
    out = []
    for n, obj in rows:
        if not _need(obj, ("question_id", "image", "text", "category"), path, n, problems):
            continue
        if SHORT not in obj["text"]:
            problems.add(path, n, "text", f"the question lacks the LLaVA suffix {SHORT!r} that the script replaces")
            continue
        cat = str(obj["category"])
        k = seen[cat] = seen.get(cat, -1) + 1
        if k >= len(labels.get(cat, [])):
            continue  # counted below
        image = images.path(obj["image"], path, n, base=folder / b.files["images"])
        if image is not None:
            out.append(record(obj["question_id"], image, obj["text"].replace(SHORT, b.suffix).strip(),
                              [labels[cat][k]], category=cat))
    for cat, labs in labels.items():
        if seen.get(cat, -1) + 1 != len(labs):
            problems.add(folder / b.files["labels"] / f"coco_pope_{cat}.json", None, "label",
                         f"{len(labs)} labels for {seen.get(cat, -1) + 1} {cat!r} questions in {b.files['questions']}")
    return out


def read_mme_folders(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """MME's release folder: one folder per subtask, questions ``question\\tanswer`` (two per
    image) in ``<image stem>.txt`` beside the image, or in ``questions_answers_YN/`` with the
    images in ``images/``; the prompt is ``question + ' ' + suffix`` (mme/eval.py)."""
    root = folder / b.files["root"]
    if not root.is_dir():
        problems.add(root, None, None, "missing: the MME release folder")
        return []
    out = []
    for task in MME_SUBTASKS:
        tdir = root / task
        if not tdir.is_dir():
            problems.add(tdir, None, None, f"missing subtask folder {task!r}")
            continue
        qdir, idir = (tdir / "questions_answers_YN", tdir / "images") if (tdir / "questions_answers_YN").is_dir() \
            else (tdir, tdir)
        for txt in sorted(qdir.glob("*.txt")):
            img = next((p for p in sorted(idir.glob(txt.stem + ".*")) if p.suffix.lower() != ".txt"), None)
            if img is None:
                problems.add(txt, None, "image", f"no image {txt.stem}.* for these questions in {idir}")
                continue
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                    problems.add(txt, n, "answer", "expected 'question<TAB>Yes|No'")
                    continue
                out.append(record(f"{task}/{txt.stem}/{n}", str(img), _suffixed(parts[0], b),
                                  [parts[1].strip()], category=task))
    return out


def read_ocrbench_tsv(folder: Path, b: Benchmark, images: Images, problems: Problems) -> list[dict]:
    """VLMEvalKit's OCRBench.tsv: ``index``, ``image`` (base64), ``question``, ``answer`` (a Python
    list literal), ``category``; the prompt is ``question + '\\n' + suffix`` (its InternVL wrapper)."""
    import pandas as pd

    path = folder / b.files["questions"]
    if not path.is_file():
        problems.add(path, None, None, "missing: the layout needs this file")
        return []
    df = pd.read_csv(path, sep="\t")
    for col in ("index", "image", "question", "answer", "category"):
        if col not in df.columns:
            problems.add(path, None, col, f"missing column {col!r}")
    if problems.items:
        return []
    out = []
    for k in range(len(df)):
        row, line = df.iloc[k], k + 2
        try:
            answers = ast.literal_eval(str(row["answer"]))
            if not isinstance(answers, list):
                raise ValueError("not a list")
        except (ValueError, SyntaxError):
            problems.add(path, line, "answer", f"expected a list literal of answers, got {str(row['answer'])[:60]!r}")
            continue
        image = images.decode(str(row["image"]), str(row["index"]), path, line)
        if image is not None:
            out.append(record(row["index"], image, _suffixed(str(row["question"]), b), [str(a) for a in answers],
                              category=str(row["category"])))
    return out


READERS: dict[str, Callable[[Path, Benchmark, Images, Problems], list[dict]]] = {
    "vqa_jsonl": read_vqa_jsonl, "vqa_jsonl_annotations": read_vqa_jsonl, "mmbench_tsv": read_mmbench_tsv,
    "scienceqa_jsonl": read_scienceqa_jsonl, "seed_jsonl": read_seed_jsonl, "pope": read_pope,
    "mme_folders": read_mme_folders, "ocrbench_tsv": read_ocrbench_tsv,
}
