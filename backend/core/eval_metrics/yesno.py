"""Yes/no benchmarks: POPE (accuracy, precision, recall, F1 of 'yes' per category, F1 averaged
over the categories) and MME (acc and acc+ per subtask, summed into perception and cognition),
as InternVL's eval/pope/eval_pope.py and eval/mme/{eval,calculation}.py score them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


# ------------------------------------------------------------------------------------ POPE
def pope_label(reply: str) -> str:
    """POPE's reading of a reply: its first sentence (up to a period), commas removed, words
    split on single spaces; 'no' when one of them is ``No``, ``no`` or ``not``, else 'yes'
    (so ``NO``, ``Nope`` and an empty reply read 'yes')."""
    text = reply.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_correct(prediction: str, answers: Sequence[str]) -> float:
    return float(bool(answers) and pope_label(prediction) == answers[0].strip().lower())


def _binary(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """'yes' is the positive class; a label other than 'no' counts as 'yes' (as the script)."""
    tp = fp = tn = fn = 0
    for p, lab in zip(preds, labels, strict=True):
        pos, truth = p != "no", lab != "no"
        tp += pos and truth
        fp += pos and not truth
        tn += not pos and not truth
        fn += not pos and truth
    # The script divides by zero (and stops) where a category has no 'yes' reply or label; 0 here.
    precision = float(tp) / float(tp + fp) if tp + fp else 0.0
    recall = float(tp) / float(tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(p != "no" for p in preds) / len(preds)}


def pope_scores(rows: Sequence[Mapping]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(summary, per category). The summary is the mean over the categories (in name order) of
    each figure: ``pope_f1`` is POPE's published "Overall F1"."""
    by_cat: dict[str, tuple[list[str], list[str]]] = {}
    for r in rows:
        cat = str((r.get("meta") or {}).get("category") or "all")
        preds, labels = by_cat.setdefault(cat, ([], []))
        preds.append(pope_label(r["prediction"]))
        labels.append(str(r["answers"][0]).strip().lower() if r.get("answers") else "")
    per = {cat: _binary(*by_cat[cat]) for cat in sorted(by_cat)}
    if not per:
        return {}, {}
    summary = {f"pope_{k}": sum(v[k] for v in per.values()) / len(per)
               for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")}
    return summary, per


# ------------------------------------------------------------------------------------- MME
MME_TASKS = {
    "perception": ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"],
    "cognition": ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"],
}
_CJK = re.compile(r"[\u4e00-\u9fa5]")


def mme_label(reply: str) -> str:
    """MME's reading of a reply ('yes', 'no' or 'other'): InternVL's post-processing (newlines
    removed, 是/不是/否 and true/false mapped, other Chinese characters dropped, lower case),
    then MME's own parse: exactly yes/no, else 'yes' or 'no' within the first four characters."""
    r = reply.replace("\n", "").replace("不是", "No").replace("是", "Yes").replace("否", "No")
    r = _CJK.sub("", r.lower().replace("true", "yes").replace("false", "no")).lower()
    if r in ("yes", "no"):
        return r
    return "yes" if "yes" in r[:4] else "no" if "no" in r[:4] else "other"


def mme_correct(prediction: str, answers: Sequence[str]) -> float:
    return float(bool(answers) and mme_label(prediction) == answers[0].strip().lower())


def mme_scores(rows: Sequence[Mapping]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(summary, per subtask). Per subtask (``meta["category"]``): ``acc`` over its questions,
    ``acc_plus`` over its images (``meta["image"]``: both questions right), ``score`` =
    100 acc + 100 acc+; ``mme_perception`` and ``mme_cognition`` sum the scores of MME's ten
    and four subtasks (those present), ``mme_total`` both."""
    tasks: dict[str, dict[str, list[bool]]] = {}
    for r in rows:
        meta = r.get("meta") or {}
        images = tasks.setdefault(str(meta.get("category") or "all"), {})
        images.setdefault(str(meta.get("image") or r.get("id")), []).append(bool(mme_correct(r["prediction"],
                                                                                                r["answers"])))
    per: dict[str, dict[str, float]] = {}
    for task, images in tasks.items():
        hits = [h for img in images.values() for h in img]
        acc = sum(hits) / len(hits)
        acc_plus = sum(all(img) for img in images.values()) / len(images)
        score = 0.0
        score += acc * 100
        score += acc_plus * 100
        per[task] = {"acc": acc, "acc_plus": acc_plus, "score": score}
    summary: dict[str, float] = {}
    for kind, names in MME_TASKS.items():
        total = 0.0
        for name in names:
            if name in per:
                total += per[name]["score"]
        summary[f"mme_{kind}"] = total
    summary["mme_total"] = summary["mme_perception"] + summary["mme_cognition"]
    return summary, per
