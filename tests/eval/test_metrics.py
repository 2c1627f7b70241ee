"""Metric functions: golden values written here for what the reference data does not cover (the
studio's own exact match, its extensions, the summaries); equality with the benchmarks' own
scoring code is tests/eval/test_metrics_reference.py."""

from __future__ import annotations

import pytest

from backend.core.eval_metrics import (
    METRICS,
    anls,
    exact_match,
    extract_choice,
    levenshtein,
    multiple_choice,
    normalise_vqa,
    relaxed_accuracy,
    score,
    summarise,
    vqa_accuracy,
)


@pytest.mark.parametrize("pred, answers, expected", [
    ("red", ["red"], 1.0),
    ("  Red. ", ["red"], 1.0),  # case, spaces and a final period do not count
    ("red..", ["red"], 0.0),  # one final period, not all of them
    ("red", ["blue", "red"], 1.0),
    ("a red", ["red"], 0.0),
    ("", ["red"], 0.0),
])
def test_exact_match(pred, answers, expected):
    assert exact_match(pred, answers) == expected


def test_vqa_normalisation_examples_of_the_issue():
    assert normalise_vqa("3 oclock") == normalise_vqa("3 o'clock") == "3 o'clock"
    assert normalise_vqa("t-shirt") == "t shirt"  # the mark is next to letters only: a space
    assert normalise_vqa("t - shirt") == "t shirt"  # a space beside it: deleted
    assert normalise_vqa("Two dogs!") == "2 dogs"


def test_vqa_accuracy_ten_answers_and_the_one_answer_extension():
    # "2" given by 2 of 10 humans: (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("2", ["2", "two"] + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # one answer (the studio's own splits): normalised exact match
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("three", ["2"]) == 0.0
    assert vqa_accuracy("x", []) == 0.0


def test_anls_follows_the_script_at_the_threshold():
    assert levenshtein("kitten", "sitting") == 3
    assert anls("abxx", ["abcd"]) == 0.5  # the ANLS paper gives 0 here (docs/evaluation.md)
    assert anls("  abxx  ", ["abcd"]) == 0.75  # divided by the raw length, 8
    assert anls("x", []) == 0.0


def test_relaxed_accuracy_percent_and_zero():
    assert relaxed_accuracy("5%", ["0.05"]) == 1.0
    assert relaxed_accuracy("5%", ["5"]) == 0.0
    assert relaxed_accuracy("0.0", ["0"]) == 0.0 and relaxed_accuracy("0", ["0"]) == 1.0
    assert relaxed_accuracy("105", ["100"]) == 1.0 and relaxed_accuracy("105.2", ["100"]) == 0.0


@pytest.mark.parametrize("pred, options, expected", [
    ("2", ["1", "2", "3", "4"], "B"),
    ("Option A is wrong; the answer is B.", ["cat", "dog"], "B"),
    ("B because it barks", ["cat", "dog"], "B"),
    ("b", ["cat", "dog"], None),
    ("(C)", None, "C"),  # no options: MMBench's letters A-E
    ("(c)", None, None),  # letters are upper case
    ("Cannot determine the answer", ["cat", "dog"], "Z"),
])
def test_extract_choice(pred, options, expected):
    assert extract_choice(pred, options) == expected


def test_multiple_choice_answer_as_letter_or_option_text():
    assert multiple_choice("B", ["B"], ["x", "y"]) == 1.0
    assert multiple_choice("y", ["y"], ["x", "y"]) == 1.0  # the answer given as the option's text
    assert multiple_choice("Z", ["A"], ["x", "y"]) == 0.0


def _row(pred, answer, **meta):  # noqa: ANN001, ANN202
    return {"prediction": pred, "answers": [answer], "meta": meta,
            "scores": {m: score(m, pred, [answer], ["x", "y"], meta) for m in METRICS}}


def test_summaries_of_the_non_mean_metrics():
    rows = [_row("B", "B", group=1, main=True), _row("A", "B", group=1, main=False),  # one rotation wrong
            _row("A", "A", group=2, main=True), _row("B", "B", group=2, main=False)]
    figures, _ = summarise(["multiple_choice", "mmbench_circular"], rows)
    assert figures == {"multiple_choice": 0.75, "mmbench_circular": 0.5}

    pope = [_row("Yes", "yes", category="random"), _row("No", "no", category="random"),
            _row("yes", "no", category="random"), _row("There is no dog.", "yes", category="popular"),
            _row("Yes", "yes", category="popular")]
    figures, per = summarise(["pope"], pope)
    # random: TP 1, FP 1, TN 1 -> P 1/2, R 1, F1 2/3; popular: TP 1, FN 1 -> P 1, R 1/2, F1 2/3
    assert per["pope"]["random"]["f1"] == pytest.approx(2 / 3) and per["pope"]["popular"]["recall"] == 0.5
    assert figures["pope_f1"] == pytest.approx(2 / 3)
    assert figures["pope_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)

    mme = [_row("Yes", "Yes", category="color", image="1.jpg"), _row("No", "No", category="color", image="1.jpg"),
           _row("Yes", "Yes", category="color", image="2.jpg"), _row("是", "No", category="color", image="2.jpg"),
           _row("no", "No", category="code_reasoning", image="3.jpg"),
           _row("maybe", "Yes", category="code_reasoning", image="3.jpg")]
    figures, per = summarise(["mme"], mme)
    assert per["mme"]["color"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0}
    assert figures == {"mme_perception": 125.0, "mme_cognition": 50.0, "mme_total": 175.0}

    ocr = [_row("It says STOP", "stop", category="Regular Text Recognition"),
           _row("x^{2}", "x ^ { 2 }", category="Handwritten Mathematical Expression Recognition"),
           _row("X^{2}", "x ^ { 2 }", category="Handwritten Mathematical Expression Recognition")]
    figures, per = summarise(["ocrbench"], ocr)
    assert figures == {"ocrbench": 2.0}
    assert per["ocrbench"]["Text Recognition"] == {"right": 1.0}


def test_score_dispatch_and_unknown_metric():
    assert score("anls", "helo", ["hello"]) == pytest.approx(0.8)
    assert score("multiple_choice", "B", ["B"], ["x", "y"]) == 1.0
    assert score("pope", "No.", ["no"]) == 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score("bleu", "a", ["a"])
