"""One FedIT experiment from a Config: data, model, transport, rounds, report.

Everything that can fail on bad input (config, files, columns, partition, model) runs before
the first byte is written to ``output_dir``, so a rejected run leaves nothing half-done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.client.attacks import attacker_ids, poison_examples
from fedit.client.train import num_local_steps
from fedit.config import Config, ConfigError
from fedit.data.prepare import PreparedData, prepare_data, tokenize_training
from fedit.data.synthetic import score_answer
from fedit.engines.simulation import SimulationTransport
from fedit.model.kernels import apply_kernels, kernels_wanted
from fedit.model.loading import load_model
from fedit.model.lora import apply_lora
from fedit.model.start_adapter import load_start_adapter
from fedit.reporting.report import write_report
from fedit.robust.defended import defend
from fedit.server.async_loop import run_buffered
from fedit.server.checkpoint import METRICS_FILE, RunDir
from fedit.server.clock import Clock, SimulatedClock
from fedit.server.closing import GLOBAL_ADAPTER, close_run
from fedit.server.global_model import GlobalModel
from fedit.server.loop import run_rounds
from fedit.server.measured import MeasuredClock
from fedit.server.observer import Observers, RunObserver
from fedit.server.privacy import PrivacyRun
from fedit.server.privacy_budget import resumed_plan
from fedit.server.protocols import Transport
from fedit.strategy import build_strategy
from fedit.strategy.personalized import personalize
from fedit.tracking import Tracking, run_identity

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What an experiment loads before its first round, in the memory of one base model."""

    data: PreparedData
    server: GlobalModel  # the base model with the run's LoRA, and the test set
    client_data: list[Any]  # each client's TokenizedExamples (sft) or TokenizedPairs (dpo)
    tokenization: dict[str, int]  # total, truncated and dropped training examples

    @property
    def num_clients(self) -> int:
        return len(self.client_data)

    def local_steps(self, client_id: int) -> int:
        """Optimizer steps one client takes per round."""
        return num_local_steps(self.server.cfg.train, len(self.client_data[client_id]))


@dataclass
class RunOutcome:
    """What ``run_experiment`` produced."""

    run_dir: Path
    history: list[dict[str, Any]]
    report: Path
    seconds: float
    setup: Setup | None = None  # None when a finished run was only read back


def load_setup(cfg: Config, data: PreparedData) -> Setup:
    """Load the base model once, add LoRA, tokenize the test set and every client's data."""
    kernels_wanted(cfg.train.kernels, cfg.model.device)  # train.kernels=liger fails before loading
    base, tokenizer = load_model(cfg.model)
    apply_kernels(base, cfg.train.kernels, cfg.model.device)
    # Seeded right here: loading may draw random numbers (the one-time GGUF conversion builds a
    # randomly initialised model), and the LoRA init must not depend on whether it ran.
    model = apply_lora(base, cfg.lora, seed=cfg.seed)
    if cfg.model.adapter:
        load_start_adapter(model, cfg.model.adapter, cfg.lora)  # the run's initial adapter
    train_cfg = cfg.train
    stats = {"total": 0, "truncated": 0, "dropped_no_labels": 0}
    client_data = []
    attackers = set(attacker_ids(cfg.attack, len(data.parts), cfg.seed))
    for client_id, indices in enumerate(data.parts):
        raw = [data.train[i] for i in indices]
        if client_id in attackers:  # a data attack poisons its own training set
            raw = poison_examples(raw, cfg.attack, cfg.seed, client_id)
        tokenized, client_stats = tokenize_training(cfg, raw, tokenizer)
        client_data.append(tokenized)
        for key in stats:
            stats[key] += client_stats[key]
    test_tokenized, _ = tokenize_training(cfg, data.test, tokenizer)
    if stats["truncated"]:
        log.warning(
            "%d of %d training examples were truncated at train.cutoff_len=%d",
            stats["truncated"],
            stats["total"],
            train_cfg.cutoff_len,
        )
    server = GlobalModel(cfg, model, tokenizer, data.test, test_tokenized, score_answer)
    return Setup(data, server, client_data, stats)


def run_experiment(
    cfg: Config,
    observer: RunObserver | None = None,
    transport: Transport | None = None,
    tracking: Tracking | None = None,
) -> RunOutcome:
    """Run (or resume) a whole experiment and write its run directory.

    Args:
        cfg: The experiment.
        observer: Progress hooks.
        transport: Reaches the clients; default: the in-process simulation on the setup's
            model. The Flower ServerApp passes one that talks to SuperNodes.
        tracking: ``report_to``'s trackers; default: this run's own, closed at the end.
            ``fedit compare`` passes FedIT's, and closes it after logging the scores.

    Returns:
        The outcome, with the ``Setup`` it loaded (``fedit compare`` trains its baselines on it).
    """
    if cfg.engine == "flower" and transport is None:
        raise ConfigError("engine=flower: start it with `fedit flower run CONFIG` (docs/deploy.md)")
    if cfg.engine == "flower-simulation" and transport is None:
        raise ConfigError(
            "engine=flower-simulation: start it with `fedit run CONFIG` (docs/deploy.md)"
        )
    started = time.perf_counter()
    run_dir = RunDir(cfg.output_dir)
    resumed_privacy = None
    strategy = build_strategy(cfg)
    if cfg.resume:
        run_dir.check_resumable(cfg)
        strategy.check_saved(run_dir.saved_strategy_keys())  # e.g. SCAFFOLD's before issue 33
        resumed_privacy = resumed_plan(cfg, run_dir.path)  # refuses rounds beyond the ε budget
    else:
        run_dir.check_fresh(cfg.overwrite)
    # A bad profile CSV fails before anything loads.
    clock: Clock | None = SimulatedClock.from_config(cfg)
    setup = load_setup(cfg, prepare_data(cfg))
    setup.data.table["tokenization"] = setup.tokenization
    if observer is not None:
        observer.on_prepared(setup.data.table)
    if transport is None:
        transport = SimulationTransport(cfg, setup.server.model, setup.client_data, observer)
    # A remote transport connects here, so that missing clients fail before anything is written.
    sizes = transport.client_sizes
    if cfg.federation.system.profiles == "measured":  # a deployment's own wall clock
        clock = MeasuredClock.for_transport(cfg, transport)
    log.info("%d clients with %d training examples", len(sizes), sum(sizes))
    privacy = None
    if cfg.privacy.level != "none":  # z calibrated before anything is written
        privacy = PrivacyRun.start(cfg, sizes, resumed_privacy)
    if not cfg.resume:
        run_dir.start(cfg, setup.data.table, cfg.overwrite)
        if privacy is not None:
            privacy.plan.save(run_dir.path)
    if clock is not None:  # only clients online at selection are selected
        strategy.select_among(clock.online)
    strategy = defend(cfg, strategy)  # attacks' collusion and robust.method
    strategy = personalize(cfg, strategy)  # personalization.method's fields in each round
    own = tracking is None
    tracking = tracking or Tracking(cfg, run_identity(run_dir.path))
    tracking.open(run_dir.path / METRICS_FILE)  # only now: bad input has written nothing
    observers = Observers(observer, tracking)  # progress bars, and report_to's trackers
    try:
        if cfg.strategy.name == "fedbuff":  # asynchronous: its own driver (docs/systems.md)
            simulated = clock if isinstance(clock, SimulatedClock) else None
            state, history = run_buffered(
                cfg, transport, setup.server, strategy, run_dir, observers, simulated
            )
        else:
            state, history = run_rounds(
                cfg, transport, setup.server, strategy, run_dir, observers, privacy, clock
            )
        # personalization: every client makes and keeps its own model (server/closing.py)
        closing = close_run(cfg, transport, setup.server, state, run_dir, privacy)
        setup.server.save_adapter(closing.global_state, run_dir.path / GLOBAL_ADAPTER)
        report = write_report(run_dir.path)
        tracking.log_outcome(history, run_dir.path)
    except BaseException:
        tracking.close(failed=True)
        raise
    if own:
        tracking.close()
    return RunOutcome(run_dir.path, history, report, time.perf_counter() - started, setup)
