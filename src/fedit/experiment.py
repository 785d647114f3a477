"""One FedIT experiment from a Config: data, model, engine, rounds, report.

Everything that can fail on bad input (config, files, columns, partition, model) runs before
the first byte is written to ``output_dir``, so a rejected run leaves nothing half-done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.config import Config, ConfigError
from fedit.data.partition import count_table, partition_examples, split_test
from fedit.data.sources import load_examples, load_test_examples
from fedit.data.synthetic import score_answer
from fedit.data.templates import tokenize_examples
from fedit.engines.base import Engine
from fedit.engines.simulation import SimulationEngine
from fedit.evaluation.report import write_report
from fedit.model.loading import load_model
from fedit.model.lora import apply_lora
from fedit.server.checkpoint import RunDir
from fedit.server.loop import run_rounds
from fedit.server.observer import RunObserver
from fedit.strategy import build_strategy
from fedit.types import Example

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The held-out test set and the training examples split across clients."""

    train: list[Example]
    test: list[Example]
    parts: list[list[int]]
    table: dict[str, Any]


@dataclass
class RunOutcome:
    """What ``run_experiment`` produced."""

    run_dir: Path
    history: list[dict[str, Any]]
    report: Path
    seconds: float


def prepare_data(cfg: Config) -> PreparedData:
    """Load, hold out the test set, and partition. Raises ConfigError on bad data."""
    examples = load_examples(cfg.data, cfg.seed)
    external_test = load_test_examples(cfg.data, cfg.seed)
    if external_test is not None:
        train, test = examples, external_test
    else:
        train, test = split_test(examples, cfg.data.test_per_category, cfg.seed)
    parts = partition_examples(train, cfg.federation.num_clients, cfg.data.partition, cfg.seed)
    table = count_table(train, parts, cfg.data.partition.by)
    table["num_train"], table["num_test"] = len(train), len(test)
    return PreparedData(train, test, parts, table)


def build_engine(
    cfg: Config, data: PreparedData, observer: RunObserver | None = None
) -> tuple[SimulationEngine, dict[str, int]]:
    """Load the base model once, add LoRA, tokenize every client's data.

    Returns:
        The simulation engine and tokenization statistics (truncated / dropped examples).
    """
    model, tokenizer = load_model(cfg.model)
    # Seeded right here: loading may draw random numbers (the one-time GGUF conversion builds a
    # randomly initialised model), and the LoRA init must not depend on whether it ran.
    model = apply_lora(model, cfg.lora, seed=cfg.seed)
    train_cfg = cfg.train
    stats = {"total": 0, "truncated": 0, "dropped_no_labels": 0}
    client_data = []
    for indices in data.parts:
        tokenized, client_stats = tokenize_examples(
            [data.train[i] for i in indices],
            tokenizer,
            cfg.data.template,
            train_cfg.cutoff_len,
            train_cfg.train_on_inputs,
        )
        client_data.append(tokenized)
        for key in stats:
            stats[key] += client_stats[key]
    test_tokenized, _ = tokenize_examples(
        data.test, tokenizer, cfg.data.template, train_cfg.cutoff_len, train_cfg.train_on_inputs
    )
    if stats["truncated"]:
        log.warning(
            "%d of %d training examples were truncated at train.cutoff_len=%d",
            stats["truncated"],
            stats["total"],
            train_cfg.cutoff_len,
        )
    engine = SimulationEngine(
        cfg, model, tokenizer, client_data, data.test, test_tokenized, score_answer, observer
    )
    return engine, stats


EngineBuilder = Callable[[Config, PreparedData, RunObserver | None], tuple[Engine, dict[str, int]]]


def run_experiment(
    cfg: Config, observer: RunObserver | None = None, make_engine: EngineBuilder | None = None
) -> RunOutcome:
    """Run (or resume) a whole experiment and write its run directory.

    Args:
        cfg: The experiment.
        observer: Progress hooks.
        make_engine: Builds the engine from the prepared data (default: ``build_engine``, the
            in-process simulation). The Flower ServerApp passes one that talks to SuperNodes.
    """
    if cfg.engine == "flower" and make_engine is None:
        raise ConfigError("engine=flower: start it with `fedit flower run CONFIG` (docs/deploy.md)")
    started = time.perf_counter()
    run_dir = RunDir(cfg.output_dir)
    if cfg.resume:
        run_dir.check_resumable(cfg)
    else:
        run_dir.check_fresh(cfg.overwrite)
    data = prepare_data(cfg)
    engine, stats = (make_engine or build_engine)(cfg, data, observer)
    data.table["tokenization"] = stats
    if observer is not None:
        observer.on_prepared(data.table)
    if not cfg.resume:
        run_dir.start(cfg, data.table, cfg.overwrite)
    strategy = build_strategy(cfg)
    state, history = run_rounds(cfg, engine, strategy, run_dir, observer)
    engine.save_adapter(state, run_dir.path / "global_adapter")
    report = write_report(run_dir.path)
    return RunOutcome(run_dir.path, history, report, time.perf_counter() - started)
