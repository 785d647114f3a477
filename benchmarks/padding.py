"""Padding waste: the fraction of processed token slots that are padding, on the quickstart data.

Target: 10% or less with length-grouped batches (train.group_by_length=true).

    .venv/bin/python benchmarks/padding.py [--config configs/quickstart.yaml]
"""

from __future__ import annotations

import argparse
from collections import Counter

from common import ROOT, record

from fedit.client.batching import batch_indices, collate, padding_stats, split_micro_batches
from fedit.config import load_config
from fedit.data.prepare import prepare_data
from fedit.data.templates import tokenize_examples
from fedit.model.loading import load_model

TARGET = 0.10


def client_waste(
    examples, categories: list[str], batch_size: int, micro: int, pad_id: int, grouped: bool
) -> tuple[dict, list[float]]:
    """Padding statistics of one epoch of one client's micro-batches, and each batch's share of
    its most common category (1.0: a single-category batch)."""
    lengths = [len(e.input_ids) for e in examples]
    batches, shares = [], []
    for indices in batch_indices(lengths, batch_size, seed=0, group_by_length=grouped):
        counts = Counter(categories[i] for i in indices)
        shares.append(max(counts.values()) / len(indices))
        for part in split_micro_batches([examples[i] for i in indices], micro):
            batches.append(collate(part, pad_id))
    return padding_stats(batches), shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    args = parser.parse_args()
    cfg = load_config(args.config)
    data = prepare_data(cfg)
    _, tokenizer = load_model(cfg.model)
    rows = []
    for grouped in (True, False):
        real = slots = 0
        shares: list[float] = []
        for indices in data.parts:
            tokenized, _ = tokenize_examples(
                [data.train[i] for i in indices],
                tokenizer,
                cfg.data.template,
                cfg.train.cutoff_len,
                cfg.train.train_on_inputs,
            )
            categories = [str(data.train[i].get("category", "")) for i in indices]
            stats, client_shares = client_waste(
                tokenized,
                categories,
                cfg.train.batch_size,
                cfg.train.micro_batch_size,
                tokenizer.pad_token_id,
                grouped,
            )
            real, slots = real + stats["real_tokens"], slots + stats["padded_tokens"]
            shares += client_shares
        single = sum(share == 1.0 for share in shares) / len(shares)
        purity = sum(shares) / len(shares)
        rows.append((grouped, real, slots, (slots - real) / slots, purity, single))
    lines = [
        "| group_by_length | real tokens | token slots | padding waste | target "
        "| mean share of a batch's main category | single-category batches |",
        "|---|---|---|---|---|---|---|",
    ]
    for grouped, real, slots, waste, purity, single in rows:
        verdict = ("met" if waste <= TARGET else "missed") if grouped else "(reference)"
        lines.append(
            f"| {grouped} | {real:,} | {slots:,} | {100 * waste:.1f}% | "
            f"≤ {100 * TARGET:.0f}%: {verdict} | {purity:.2f} | {100 * single:.0f}% |"
        )
    body = (
        f"One epoch of every client's micro-batches ({cfg.train.micro_batch_size} examples), "
        f"data `{cfg.data.source}`, template `{cfg.data.template}`, "
        f"{len(data.parts)} clients.\n\n" + "\n".join(lines)
    )
    record("padding", "Padding waste (quickstart data)", body)


if __name__ == "__main__":
    main()
