"""Metric functions against values computed by hand."""

from __future__ import annotations

import pytest

from backend.core.eval_metrics import (
    anls,
    exact_match,
    extract_choice,
    levenshtein,
    multiple_choice,
    normalise_vqa,
    relaxed_accuracy,
    score,
    vqa_accuracy,
)


@pytest.mark.parametrize("pred, answers, expected", [
    ("red", ["red"], 1.0),
    ("  Red. ", ["red"], 1.0),  # case, spaces and a final period do not count
    ("red", ["blue", "red"], 1.0),
    ("a red", ["red"], 0.0),
    ("", ["red"], 0.0),
])
def test_exact_match(pred, answers, expected):
    assert exact_match(pred, answers) == expected


def test_vqa_normalisation():
    assert normalise_vqa("Two dogs!") == "2 dogs"
    assert normalise_vqa("The cat") == "cat"
    assert normalise_vqa("dont know") == "don't know"
    assert normalise_vqa("1,000") == "1000"
    assert normalise_vqa("yes.") == "yes"


def test_vqa_accuracy_ten_answers():
    # "2" given by 2 of 10 humans: leaving out one of the two leaves 1 match (1/3), leaving
    # out one of the other 8 leaves 2 matches (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    answers = ["2", "two"] + ["3"] * 8
    assert vqa_accuracy("2", answers) == pytest.approx(0.6)
    # Given by 4 of 10: every leave-one-out subset keeps >= 3 matches.
    assert vqa_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)
    # Given by 3 of 10: (3 * 2/3 + 7 * 1) / 10 = 0.9.
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("maybe", ["yes"] * 10) == 0.0


def test_vqa_accuracy_single_answer_is_normalised_exact_match():
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("three", ["2"]) == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


@pytest.mark.parametrize("pred, answers, expected", [
    ("hello", ["hello"], 1.0),
    ("Hello ", ["hello"], 1.0),  # case and surrounding space ignored
    ("helo", ["hello"], 0.8),  # distance 1 over length 5
    ("abcx", ["abcd"], 0.75),  # distance 1 over length 4
    ("abxx", ["abcd"], 0.0),  # distance 2 / 4 = 0.5: at the threshold the score is 0
    ("ax", ["ab"], 0.0),  # 1 / 2 = 0.5
    ("abcdefghix", ["abcdefghij"], 0.9),
    ("xyz", ["abc"], 0.0),
    ("", ["abc"], 0.0),
    ("", [""], 1.0),
    ("helo", ["world", "hello"], 0.8),  # the best answer counts
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected)


@pytest.mark.parametrize("pred, answers, expected", [
    ("10.4", ["10"], 1.0),  # 4% off
    ("10.5", ["10"], 1.0),  # exactly 5% is accepted
    ("10.6", ["10"], 0.0),  # 6% off
    ("9.4", ["10"], 0.0),
    ("5%", ["5.2"], 1.0),  # |5 - 5.2| / 5.2 = 3.8%; the percent sign is ignored
    ("45%", ["45"], 1.0),
    ("1,000", ["1040"], 1.0),  # 3.8%
    ("0", ["0"], 1.0),
    ("0.01", ["0"], 0.0),
    ("Yes", ["yes"], 1.0),  # text answers: exact match
    ("no", ["yes"], 0.0),
    ("ten", ["10"], 0.0),
])
def test_relaxed_accuracy(pred, answers, expected):
    assert relaxed_accuracy(pred, answers) == expected


@pytest.mark.parametrize("pred, options, expected", [
    ("B", None, "B"),
    ("(c)", None, "C"),
    ("D.", None, "D"),
    ("B. a cat", None, "B"),
    ("(A) the dog", None, "A"),
    ("The answer is C.", None, "C"),
    ("Answer: D", None, "D"),
    ("I think it is (B) because", None, "B"),
    ("The answer is a cat", ["dog", "cat"], "B"),  # "a" is an article, not option A
    ("it is a dog", ["dog", "cat"], "A"),
    ("a dog or a cat", ["dog", "cat"], None),  # ambiguous: no letter
    ("E", ["w", "x", "y", "z"], None),  # no option E
    ("no idea", None, None),
])
def test_extract_choice(pred, options, expected):
    assert extract_choice(pred, options) == expected


def test_multiple_choice_accuracy():
    assert multiple_choice("The answer is B", ["B"]) == 1.0
    assert multiple_choice("(A)", ["B"]) == 0.0
    assert multiple_choice("cat", ["cat"], options=["dog", "cat"]) == 1.0  # answer given as option text
    assert multiple_choice("nothing", ["A"]) == 0.0


def test_score_dispatch_and_unknown_metric():
    assert score("anls", "helo", ["hello"]) == pytest.approx(0.8)
    assert score("multiple_choice", "B", ["B"], ["x", "y"]) == 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score("bleu", "a", ["a"])
