"""Text-overlap metrics: exact match, token F1 and ROUGE-L against values computed by hand."""

from __future__ import annotations

import pytest

from fedit.evaluation.metrics import (
    exact_match,
    generation_scores,
    normalize_text,
    rouge_l,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat, sat!", "cat sat"),
        ("  an   apple\tA DAY\n", "apple day"),
        ("the theory of the thermos", "theory of thermos"),  # only whole-word articles go
        ("Hello,world", "helloworld"),  # punctuation is removed, not replaced by a space
        ("", ""),
        ("a an the", ""),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_exact_match_after_normalisation() -> None:
    assert exact_match("The answer: Paris.", "answer paris") == 1.0
    assert exact_match("Paris", "Paris, France") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_by_hand() -> None:
    # "the" goes; prediction {cat, sat}, reference {cat, sat, down}: P = 1, R = 2/3.
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    # Shared tokens count with multiplicity: pred [a1 a1 b] vs ref [a1 b b] share a1, b -> 2.
    # P = R = 2/3, F1 = 2/3.
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "cat") == 0.0  # prediction empty after normalisation


def test_rouge_l_by_hand() -> None:
    # prediction: the cat is on a mat (6 words); reference: the cat sat on the mat (6 words).
    # LCS = the cat on mat = 4 words: P = 4/6, R = 4/6, F = 2/3.
    assert rouge_l("the cat is on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # prediction: a b c (3), reference: a x b y (4); LCS = a b = 2: P = 2/3, R = 1/2.
    precision, recall = 2 / 3, 1 / 2
    expected = 2 * precision * recall / (precision + recall)
    assert rouge_l("a b c", "a x b y") == pytest.approx(expected)
    assert rouge_l("Blue Green", "blue, green!") == pytest.approx(1.0)  # case and punctuation
    assert rouge_l("red", "blue") == 0.0


def test_generation_scores_overall_and_per_category() -> None:
    predictions = ["Paris", "the cat sat", "4", "blue green red"]
    references = ["paris", "cat sat down", "5", "red green blue"]
    categories = ["geo", "text", "math", "text"]
    scores = generation_scores(predictions, references, categories)
    assert scores["num_examples"] == 4
    assert scores["exact_match"] == pytest.approx(1 / 4)
    assert scores["exact_match_by_category"] == {"geo": 1.0, "math": 0.0, "text": 0.0}
    assert list(scores["token_f1_by_category"]) == ["geo", "math", "text"]
    # text: token F1 0.8 and 1.0 (same bag of words) -> 0.9; overall (1 + 0.8 + 0 + 1) / 4.
    assert scores["token_f1_by_category"]["text"] == pytest.approx(0.9)
    assert scores["token_f1"] == pytest.approx(2.8 / 4)
    # ROUGE-L keeps articles: "the cat sat" vs "cat sat down" has LCS 2 of 3 words -> 2/3;
    # "blue green red" vs "red green blue" has LCS 1 word ("green") -> 1/3.
    assert scores["rouge_l_by_category"]["text"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert scores["rouge_l"] == pytest.approx((1 + 2 / 3 + 0 + 1 / 3) / 4)


def test_generation_scores_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="2 predictions, 1 references"):
        generation_scores(["a", "b"], ["a"], ["x", "y"])
    with pytest.raises(ValueError, match="no examples"):
        generation_scores([], [], [])
