"""An experiment's data: load it, hold out the test set, and split the rest across clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedit.config import Config
from fedit.data.heterogeneity import heterogeneity
from fedit.data.partition import (
    count_table,
    partition_examples,
    split_client_tests,
    split_test,
)
from fedit.data.preference import TokenizedPair, tokenize_pairs
from fedit.data.sources import load_examples, load_test_examples
from fedit.data.templates import TokenizedExample, tokenize_examples
from fedit.types import Example


@dataclass
class PreparedData:
    """The held-out test set and the training examples split across clients."""

    train: list[Example]
    test: list[Example]
    parts: list[list[int]]  # client id -> indices into ``train``
    client_test: list[list[Example]]  # client id -> its own test share (data.client_test_fraction)
    table: dict[str, Any]  # examples per client and label, heterogeneity, for the report


def prepare_data(cfg: Config) -> PreparedData:
    """Load, hold out the test set, and partition. Raises ConfigError on bad data."""
    preference = cfg.train.objective == "dpo"  # pairs: chosen (as output) and rejected
    examples = load_examples(cfg.data, cfg.seed, preference)
    external_test = load_test_examples(cfg.data, cfg.seed, preference)
    if external_test is not None:
        train, test = examples, external_test
    else:
        train, test = split_test(examples, cfg.data.test_per_category, cfg.seed)
    parts = partition_examples(train, cfg.federation.num_clients, cfg.data.partition, cfg.seed)
    parts, test_parts = split_client_tests(parts, cfg.data.client_test_fraction, cfg.seed)
    table = count_table(train, parts, cfg.data.partition.by)
    table["num_train"], table["num_test"] = sum(len(p) for p in parts), len(test)
    if cfg.data.client_test_fraction > 0:
        table["client_test"] = [len(p) for p in test_parts]
    table["heterogeneity"] = heterogeneity(train, parts, cfg.data.partition.by)
    client_test = [[train[i] for i in part] for part in test_parts]
    return PreparedData(train, test, parts, client_test, table)


def tokenize_training(
    cfg: Config, examples: list[Example], tokenizer: Any
) -> tuple[list[TokenizedExample] | list[TokenizedPair], dict[str, int]]:
    """Tokenize as the objective trains: examples (sft) or chosen / rejected pairs (dpo).

    Returns:
        The tokenized items and counts of ``total``, ``truncated`` and ``dropped_no_labels``.
    """
    data, train = cfg.data, cfg.train
    if train.objective == "dpo":
        return tokenize_pairs(examples, tokenizer, data.template, train.cutoff_len)
    return tokenize_examples(
        examples, tokenizer, data.template, train.cutoff_len, train.train_on_inputs
    )
