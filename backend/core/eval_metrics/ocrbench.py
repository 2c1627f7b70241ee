"""OCRBench (VLMEvalKit's ``OCRBench.evaluate``): a reply is right when it contains one of the
answers (case-insensitive, newlines as spaces; for handwritten mathematical expressions
case-sensitive with every space removed). The score is the number of right replies (out of
OCRBench's 1,000), also given per OCRBench's five groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

HME = "Handwritten Mathematical Expression Recognition"
TEXT_RECOGNITION = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")
GROUPS = ("Text Recognition", "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction", HME)


def ocrbench_hit(prediction: str, answers: Sequence[str], category: str | None = None) -> float:
    if category == HME:
        p = str(prediction).strip().replace("\n", " ").replace(" ", "")
        return float(any(a.strip().replace("\n", " ").replace(" ", "") in p for a in answers))
    p = str(prediction).lower().strip().replace("\n", " ")
    return float(any(a.lower().strip().replace("\n", " ") in p for a in answers))


def ocrbench_scores(rows: Sequence[Mapping]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(``{"ocrbench": right replies}``, right replies per group)."""
    groups = dict.fromkeys(GROUPS, 0)
    other = 0
    for r in rows:
        cat = (r.get("meta") or {}).get("category")
        hit = int(ocrbench_hit(r["prediction"], r["answers"], cat))
        group = "Text Recognition" if cat in TEXT_RECOGNITION else cat
        if group in groups:
            groups[group] += hit
        else:
            other += hit
    per = {g: {"right": float(n)} for g, n in groups.items()}
    if other:
        per["other"] = {"right": float(other)}
    return {"ocrbench": float(sum(groups.values()) + other)}, per
