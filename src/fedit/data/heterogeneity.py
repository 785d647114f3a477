"""How heterogeneous a client split is: label entropy, divergence from the global mix, size skew.

Statistics of a partition, measured over the label column (``data.partition.by``, the category
by default):

- per client, the **entropy** H of its label distribution, in bits, and its **effective number
  of labels** 2^H (1 for a client holding a single label, k for k labels in equal shares);
- the **Jensen–Shannon divergence** of each client's distribution from the pooled training
  distribution, base 2, so 0 (identical) to 1 (disjoint support); its mean and maximum;
- the **quantity skew**: the coefficient of variation (population std / mean) of client sizes.

A split whose data has fewer than two labels (no category column, or one category) has no label
skew to measure. The same statistics are then taken over **response-length quartiles** (the
quartiles of the pooled training set's response lengths in characters), and the result says so.

Example:
    stats = heterogeneity(train, parts, by="category")
    print(format_heterogeneity(stats))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedit.types import Example

LENGTH_QUARTILES = "response-length quartile"


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution proportional to ``counts`` (0 log 0 = 0)."""
    p = counts[counts > 0] / counts.sum()
    return max(0.0, float(-(p * np.log2(p)).sum()))


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between two count vectors' distributions."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = (p + q) / 2
    return entropy_bits(m) - (entropy_bits(p) + entropy_bits(q)) / 2


def _label_matrix(
    examples: list[Example], parts: list[list[int]], by: str
) -> tuple[np.ndarray, str, list[str]]:
    """Counts (clients x labels), what the labels are, and their names."""
    labels = [str(example.get(by, "")) for example in examples]
    measured = by
    if len(set(labels)) < 2:
        lengths = np.array([len(example.get("output", "")) for example in examples])
        edges = np.quantile(lengths, [0.25, 0.5, 0.75]) if len(lengths) else np.array([])
        buckets = np.searchsorted(edges, lengths, side="right")
        labels = [f"Q{int(b) + 1}" for b in buckets]
        measured = LENGTH_QUARTILES
    names = sorted(set(labels))
    column = {name: j for j, name in enumerate(names)}
    counts = np.zeros((len(parts), len(names)))
    for client, part in enumerate(parts):
        for i in part:
            counts[client, column[labels[i]]] += 1
    return counts, measured, names


def heterogeneity(
    examples: list[Example], parts: list[list[int]], by: str = "category"
) -> dict[str, Any]:
    """The split's heterogeneity statistics, in the shape written to partition.json.

    Args:
        examples: The training examples that ``parts`` index into.
        parts: Example indices per client.
        by: The label column (``data.partition.by``).

    Returns:
        ``{"measured_over", "labels", "clients": [{"client", "entropy_bits",
        "effective_labels", "js_divergence"}], "js_divergence": {"mean", "max"},
        "size_cv"}``. A client with no examples has ``None`` for its three statistics and is left
        out of the mean and maximum.
    """
    counts, measured, names = _label_matrix(examples, parts, by)
    pooled = counts.sum(axis=0)
    clients: list[dict[str, Any]] = []
    divergences = []
    for client, row in enumerate(counts):
        if row.sum() == 0:
            empty = {"entropy_bits": None, "effective_labels": None, "js_divergence": None}
            clients.append({"client": client, **empty})
            continue
        h = entropy_bits(row)
        divergence = js_divergence(row, pooled)
        divergences.append(divergence)
        clients.append(
            {
                "client": client,
                "entropy_bits": h,
                "effective_labels": float(2.0**h),
                "js_divergence": divergence,
            }
        )
    sizes = counts.sum(axis=1)
    return {
        "measured_over": measured,
        "labels": names,
        "clients": clients,
        "js_divergence": {
            "mean": float(np.mean(divergences)) if divergences else None,
            "max": float(np.max(divergences)) if divergences else None,
        },
        "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else None,
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_heterogeneity(stats: dict[str, Any]) -> str:
    """A few plain-text lines for under the count table."""
    effective = [c["effective_labels"] for c in stats["clients"] if c["effective_labels"]]
    entropies = [c["entropy_bits"] for c in stats["clients"] if c["entropy_bits"] is not None]
    labels = len(stats["labels"])
    over = stats["measured_over"]
    lines = []
    if over == LENGTH_QUARTILES:
        lines.append(
            "fewer than two categories: label skew is measured over response-length quartiles"
        )
    lines.append(
        f"heterogeneity over {over} ({labels} values): "
        f"entropy {_num(min(entropies, default=None))}–{_num(max(entropies, default=None))} "
        f"bits per client (max {_num(np.log2(labels) if labels else None)}), "
        f"effective {over} values per client "
        f"{_num(min(effective, default=None), 1)}–{_num(max(effective, default=None), 1)}"
    )
    js = stats["js_divergence"]
    lines.append(
        f"Jensen–Shannon divergence from the global mix: mean {_num(js['mean'], 3)}, "
        f"max {_num(js['max'], 3)} (0 = same mix, 1 = disjoint); "
        f"size skew (CV of client sizes) {_num(stats['size_cv'])}"
    )
    return "\n".join(lines)
