"""The federated round loop, written once. It knows strategies and engines only by interface."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from fedit.config import Config
from fedit.engines.base import Engine
from fedit.server.checkpoint import RunDir
from fedit.server.observer import RunObserver
from fedit.strategy.base import Strategy
from fedit.types import AdapterState, ClientUpdate, RoundResult

log = logging.getLogger(__name__)


def round_lr(cfg: Config, server_round: int) -> float:
    """Learning rate for a round: constant, or cosine from lr to lr_min across rounds.

    The cosine follows OpenFedLLM: ``lr_min + (lr - lr_min) * (1 + cos(pi * t / T)) / 2`` with
    ``t = server_round - 1`` and ``T`` the number of rounds, so round 1 trains at ``lr``.
    """
    train = cfg.train
    if train.lr_schedule == "constant":
        return train.lr
    progress = (server_round - 1) / cfg.federation.rounds
    return train.lr_min + 0.5 * (train.lr - train.lr_min) * (1 + math.cos(math.pi * progress))


def _eval_due(cfg: Config, server_round: int) -> bool:
    return server_round % cfg.eval.every == 0 or server_round == cfg.federation.rounds


def _evaluate(
    engine: Engine, state: AdapterState | None, label: str, observer: RunObserver
) -> dict[str, Any]:
    observer.on_eval_start(label)
    metrics = engine.evaluate(state)
    observer.on_eval_end(label, metrics)
    return metrics


def run_rounds(
    cfg: Config,
    engine: Engine,
    strategy: Strategy,
    run_dir: RunDir,
    observer: RunObserver | None = None,
) -> tuple[AdapterState, list[dict[str, Any]]]:
    """Run (or resume) FedIT rounds, checkpointing after each one.

    Returns:
        The final global adapter and the metrics history (round 0 is the base model).
    """
    observer = observer or RunObserver()
    point = run_dir.resume_point() if cfg.resume else None
    if point is not None and point.adapter_dir is not None:
        state = engine.load_adapter(point.adapter_dir)
        strategy.load_state_dict(point.strategy_state)
    else:
        state = engine.initial_state()
    history = point.history if point is not None else []
    first_round = point.next_round if point is not None else 1

    if cfg.eval.base and not any(r["round"] == 0 for r in history):
        started = time.perf_counter()
        base = _evaluate(engine, None, "base", observer)
        history.append({"round": 0, "eval": base, "seconds": {"eval": _since(started)}})
        run_dir.write_metrics(history)

    observer.on_run_start(first_round, cfg.federation.rounds)
    for server_round in range(first_round, cfg.federation.rounds + 1):
        started = time.perf_counter()
        lr = round_lr(cfg, server_round)
        selection, instructions = strategy.configure_fit(
            server_round, state, engine.client_sizes, lr
        )
        observer.on_round_start(server_round, selection.participants)
        updates = engine.fit(instructions, server_round)
        fit_done = time.perf_counter()
        aggregation: dict[str, Any] = {}
        if len(updates) >= max(1, cfg.federation.min_fit_clients):
            state, aggregation = strategy.aggregate_fit(server_round, state, updates)
        else:
            aggregation["skipped"] = (
                f"{len(updates)} of federation.min_fit_clients="
                f"{cfg.federation.min_fit_clients} clients replied; global adapter unchanged"
            )
            log.warning("round %d: %s", server_round, aggregation["skipped"])
        aggregate_done = time.perf_counter()
        evaluation = None
        if _eval_due(cfg, server_round):
            evaluation = _evaluate(engine, state, f"round {server_round}", observer)
        eval_done = time.perf_counter()

        record = RoundResult(
            round=server_round,
            selected_clients=selection.selected,
            train_loss={u.client_id: u.train_loss for u in updates},
            num_examples={u.client_id: u.num_examples for u in updates},
            eval=evaluation,
            seconds={
                "fit": fit_done - started,
                "aggregate": aggregate_done - fit_done,
                "eval": eval_done - aggregate_done,
            },
            lr=lr,
        ).to_json()
        record["dropped_clients"] = selection.dropped
        record["client_metrics"] = {str(u.client_id): u.metrics for u in updates}
        record["communication"] = communication_totals(updates)
        record["aggregation"] = aggregation
        engine.save_adapter(state, run_dir.round_dir(server_round))
        history.append(record)
        run_dir.write_metrics(history)
        run_dir.complete_round(server_round, strategy.state_dict())
        log.info("round %d/%d: %s", server_round, cfg.federation.rounds, _summary(record))
        observer.on_round_end(record)
    return state, history


def communication_totals(updates: list[ClientUpdate]) -> dict[str, int]:
    """Bytes sent to and received from this round's clients, as serialised."""
    return {
        "bytes_down": sum(int(u.metrics.get("bytes_down", 0)) for u in updates),
        "bytes_up": sum(int(u.metrics.get("bytes_up", 0)) for u in updates),
    }


def _since(started: float) -> float:
    return time.perf_counter() - started


def _summary(record: dict[str, Any]) -> str:
    losses = list(record["train_loss"].values())
    parts = [f"clients {record['selected_clients']}"]
    if losses:
        parts.append(f"train loss {sum(losses) / len(losses):.4f}")
    evaluation = record.get("eval") or {}
    if "loss" in evaluation:
        parts.append(f"eval loss {evaluation['loss']:.4f}")
    if "accuracy" in evaluation:
        parts.append(f"accuracy {evaluation['accuracy']:.3f}")
    parts.append(f"{sum(record['seconds'].values()):.1f}s")
    return ", ".join(parts)
