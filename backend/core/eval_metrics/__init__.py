"""Evaluation metrics of the benchmark families, as pure functions, equal to each benchmark's
official scoring code (the reference data in ``tests/data/reference/eval_metrics`` and
``tests/eval/test_metrics_reference.py``; the deliberate differences are in docs/evaluation.md).

Every metric scores each sample (``score``: a number in [0, 1]); a dataset's figure is the mean
of those, except for the metrics whose official figure is not a mean (``summarise``):

- ``mmbench_circular``: the share of questions right in every rotation of their options;
- ``pope``: ``pope_f1`` (and accuracy, precision, recall, yes ratio), per category, averaged;
- ``mme``: ``mme_perception``, ``mme_cognition``, ``mme_total`` (acc + acc+ per subtask, summed);
- ``ocrbench``: the number of right replies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from backend.core.eval_metrics.choice import circular_accuracy, extract_choice, multiple_choice
from backend.core.eval_metrics.ocrbench import ocrbench_hit, ocrbench_scores
from backend.core.eval_metrics.text import (
    anls,
    exact_match,
    levenshtein,
    normalise_basic,
    normalise_vqa,
    relaxed_accuracy,
    vqa_accuracy,
)
from backend.core.eval_metrics.yesno import (
    mme_correct,
    mme_label,
    mme_scores,
    pope_correct,
    pope_label,
    pope_scores,
)

__all__ = ["METRICS", "anls", "exact_match", "extract_choice", "levenshtein", "mean", "mme_label",
           "multiple_choice", "normalise_basic", "normalise_vqa", "pope_label", "relaxed_accuracy", "score",
           "summarise", "vqa_accuracy"]

METRICS = ("exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice", "mmbench_circular",
           "pope", "mme", "ocrbench")
#: metrics that read a record's ``options``
CHOICE_METRICS = ("multiple_choice", "mmbench_circular")


def score(metric: str, prediction: str, answers: Sequence[str], options: Sequence[str] | Mapping[str, str] | None
          = None, meta: Mapping[str, Any] | None = None) -> float:
    """One sample's score; ``meta`` carries what a benchmark's rule needs (OCRBench's category)."""
    if metric in CHOICE_METRICS:
        return multiple_choice(prediction, answers, options)
    simple: dict[str, Callable[[str, Sequence[str]], float]] = {
        "exact_match": exact_match, "vqa_accuracy": vqa_accuracy, "anls": anls, "relaxed_accuracy": relaxed_accuracy,
        "pope": pope_correct, "mme": mme_correct}
    if metric in simple:
        return simple[metric](prediction, answers)
    if metric == "ocrbench":
        return ocrbench_hit(prediction, answers, (meta or {}).get("category"))
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(metrics: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """The dataset's figures for ``metrics`` from its scored rows (``prediction``, ``answers``,
    ``scores``, ``meta``): (``{figure: value}``, ``{metric: per category}`` for the metrics that
    have one). A mean metric's figure is named as the metric."""
    figures: dict[str, float] = {}
    breakdown: dict[str, Any] = {}
    for m in metrics:
        if m == "mmbench_circular":
            figures[m] = circular_accuracy(rows)
        elif m in ("pope", "mme", "ocrbench"):
            got, per = {"pope": pope_scores, "mme": mme_scores, "ocrbench": ocrbench_scores}[m](rows)
            figures.update(got)
            breakdown[m] = per
        else:
            figures[m] = mean([r["scores"][m] for r in rows])
    return figures, breakdown
