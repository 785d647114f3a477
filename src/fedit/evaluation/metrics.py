"""Text-overlap scores of a generated answer against a reference: exact match, token F1, ROUGE-L.

Exact match and token F1 follow the SQuAD evaluation script (lower-case, no punctuation, no
articles, single spaces); ROUGE-L is ``rouge_score``'s F-measure on the raw texts (it does its own
lower-casing and tokenization). All functions are pure Python, no torch.

Example:
    >>> token_f1("the cat sat", "cat sat down")
    0.8
    >>> scores = generation_scores(["Paris", "4"], ["paris", "5"], ["geo", "math"])
    >>> scores["exact_match"], scores["exact_match_by_category"]
    (0.5, {'geo': 1.0, 'math': 0.0})
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from fedit.data.synthetic import score_answer

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

_rouge_scorer: Any = None  # rouge_score.rouge_scorer.RougeScorer, built on first use


def normalize_text(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and the articles a/an/the, single spaces.

    Args:
        text: Any answer text.

    Returns:
        The normalised text, e.g. ``"The Cat, sat!"`` -> ``"cat sat"``.
    """
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_text(prediction) == normalize_text(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the shared normalised tokens.

    Tokens are counted with multiplicity. Two empty texts score 1.0; one empty text scores 0.0.
    """
    predicted = normalize_text(prediction).split()
    expected = normalize_text(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(predicted)
    recall = shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def _scorer() -> Any:
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(["rougeL"])
    return _rouge_scorer


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), as ``rouge_score`` computes it.

    No stemming; a text without any word (e.g. empty) scores 0.0.
    """
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
}


def generation_scores(
    predictions: Sequence[str], references: Sequence[str], categories: Sequence[str]
) -> dict[str, Any]:
    """Mean exact match, token F1 and ROUGE-L over examples, overall and per category.

    Args:
        predictions: Generated answers.
        references: Reference answers, one per prediction.
        categories: Category of each example.

    Returns:
        ``exact_match``, ``token_f1``, ``rouge_l`` (means over all examples), ``num_examples``,
        and ``<metric>_by_category`` dicts with the mean within each category (sorted keys).

    Raises:
        ValueError: No examples, or sequences of different lengths.
    """
    if not (len(predictions) == len(references) == len(categories)):
        raise ValueError(
            f"generation_scores: {len(predictions)} predictions, {len(references)} references "
            f"and {len(categories)} categories; expected one of each per example"
        )
    if not predictions:
        raise ValueError("generation_scores: got no examples")
    result: dict[str, Any] = {}
    for name, metric in _METRICS.items():
        by_category: dict[str, list[float]] = defaultdict(list)
        for prediction, reference, category in zip(
            predictions, references, categories, strict=True
        ):
            by_category[category].append(metric(prediction, reference))
        values = [value for scores in by_category.values() for value in scores]
        result[name] = sum(values) / len(values)
        result[f"{name}_by_category"] = {
            category: sum(scores) / len(scores) for category, scores in sorted(by_category.items())
        }
    result["num_examples"] = len(predictions)
    return result


def exact_answer_accuracy(
    answers: list[str], references: list[str], categories: list[str]
) -> dict[str, Any]:
    """The training run's own accuracy (``score_answer``: first line, exact after light cleanup),
    so a compare table matches the run's report."""
    hits: dict[str, list[bool]] = {}
    for answer, reference, category in zip(answers, references, categories, strict=True):
        hits.setdefault(category, []).append(score_answer(answer, reference))
    flat = [hit for values in hits.values() for hit in values]
    return {
        "accuracy": sum(flat) / len(flat) if flat else 0.0,
        "accuracy_by_category": {c: sum(v) / len(v) for c, v in sorted(hits.items())},
    }
