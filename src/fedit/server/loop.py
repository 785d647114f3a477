"""The federated round loop, written once. It knows strategies and transports only by interface."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any

from fedit.client.state import keeps_client_state, stamp_instructions
from fedit.config import Config
from fedit.server.checkpoint import RunDir
from fedit.server.clock import Clock
from fedit.server.observer import RunObserver
from fedit.server.privacy import PrivacyRun
from fedit.server.protocols import ServerModel, Transport
from fedit.server.secure import fit_secure, public_metrics, too_few_to_hide, weighted_mean
from fedit.strategy.base import Strategy
from fedit.strategy.informed import category_counts
from fedit.strategy.selection import Selection
from fedit.types import AdapterState, ClientUpdate, FitInstruction, RoundResult

log = logging.getLogger(__name__)

# Why a round of a strategy whose global adapter is no client's model has no evaluation.
NOT_EVALUATED = (
    "not evaluated: under personalization.method={} each client pairs the global A with its "
    "own B, and the server holds no B"
)


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


def generation_due(cfg: Config, server_round: int) -> bool:
    """Whether an evaluation at ``server_round`` also generates (accuracy), not only the loss.

    Always for the starting point (round 0) and the last round, so the report's base and final
    accuracy do not depend on ``eval.generate_every``; otherwise every k-th round (0: never).
    """
    every = cfg.eval.generate_every
    last = server_round in (0, cfg.federation.rounds)
    return last or (every > 0 and server_round % every == 0)


class RoundFailedError(RuntimeError):
    """Fewer than ``federation.min_fit_clients`` usable replies, because clients failed."""


def enough_replies(
    cfg: Config,
    server_round: int,
    selection: Selection,
    instructions: list[FitInstruction],
    answered: list[int],
    always_release: bool = False,
) -> bool:
    """Whether a round aggregates: the one place that judges how many clients replied.

    Clients that were sent an instruction and gave no usable reply (they failed, timed out or
    replied malformed) are logged; if they leave fewer than ``federation.min_fit_clients``
    replies, the run stops naming them. A shortfall caused only by selected clients that
    went offline (``federation.selection=availability``: never asked) skips the round and
    keeps the global adapter, as a server does when devices go away. With
    ``always_release`` (client-level DP) no round is skipped: a skip would tell who reads the
    checkpoints that the secret sample was small, and the accountant assumed a release every
    round; the server's noise makes up for the missing replies.

    Raises:
        RoundFailedError: too few replies because clients failed.
    """
    needed = max(1, cfg.federation.min_fit_clients)
    failed = sorted(i.client_id for i in instructions if i.client_id not in set(answered))
    if len(answered) >= needed or (always_release and not failed):
        if failed:
            log.warning("round %d: going on without clients %s", server_round, failed)
        return True
    if failed:
        raise RoundFailedError(
            f"round {server_round}: {len(answered)} valid replies, "
            f"federation.min_fit_clients={needed}; no usable reply from clients {failed}"
        )
    log.warning(
        "round %d: %d of federation.min_fit_clients=%d clients replied (offline: %s); "
        "global adapter unchanged",
        server_round,
        len(answered),
        needed,
        selection.dropped,
    )
    return False


def _evaluate(
    server: ServerModel,
    state: AdapterState | None,
    label: str,
    observer: RunObserver,
    generate: bool = True,
) -> dict[str, Any]:
    observer.on_eval_start(label)
    metrics = server.evaluate(state, generate=generate)
    observer.on_eval_end(label, metrics)
    return metrics


def evaluate_start(
    cfg: Config,
    server: ServerModel,
    run_dir: RunDir,
    history: list[dict[str, Any]],
    observer: RunObserver,
) -> None:
    """Record round 0 (with ``eval.base``, unless a resumed run has it): what round 1 starts
    from, the base model or ``model.adapter``."""
    if not cfg.eval.base or any(r["round"] == 0 for r in history):
        return
    started = time.perf_counter()
    start = server.initial_state() if cfg.model.adapter else None
    base = _evaluate(server, start, "start" if start else "base", observer)
    record = {"round": 0, "eval": base, "seconds": {"eval": _since(started)}}
    if start is not None:
        record["start"] = cfg.model.adapter  # the report labels round 0 by it
    history.append(record)
    run_dir.write_metrics(history)


def evaluate_round(
    cfg: Config,
    server: ServerModel,
    state: AdapterState,
    server_round: int,
    observer: RunObserver,
) -> dict[str, Any] | None:
    """The held-out scores of ``state`` after ``server_round``, or None when none is due."""
    if not _eval_due(cfg, server_round):
        return None
    generate = generation_due(cfg, server_round)
    return _evaluate(server, state, f"round {server_round}", observer, generate)


def run_rounds(
    cfg: Config,
    transport: Transport,
    server: ServerModel,
    strategy: Strategy,
    run_dir: RunDir,
    observer: RunObserver | None = None,
    privacy: PrivacyRun | None = None,
    clock: Clock | None = None,
) -> tuple[AdapterState, list[dict[str, Any]]]:
    """Run (or resume) FedIT rounds, checkpointing after each one.

    Args:
        cfg: The experiment.
        transport: Reaches the clients (in-process or Flower).
        server: The server's model: initial adapter, evaluation, adapter files.
        strategy: Selects clients, builds their instructions, aggregates their replies.
        run_dir: Where checkpoints and metrics.jsonl go.
        observer: Progress hooks.
        privacy: Differential privacy (``privacy.level`` other than none): C and noise shares
            in the instructions, the noised unweighted mean, ε in each round's record.
        clock: The simulated clock (``federation.system``), or the measured one on a
            deployment (``server.measured``): each round's duration and clients' times in its
            record; clients past ``federation.deadline`` dropped.

    Returns:
        The final global adapter and the metrics history (round 0 is the base
        model, or model.adapter).
    """
    observer = observer or RunObserver()
    point = run_dir.resume_point() if cfg.resume else None
    if point is not None and point.adapter_dir is not None:
        state = server.load_adapter(point.adapter_dir)
        strategy.load_state_dict(point.strategy_state)
    else:
        state = server.initial_state()
    history = point.history if point is not None else []
    first_round = point.next_round if point is not None else 1
    # A resume is a new attempt: client state saved in a round it replays is never read.
    attempt = run_dir.attempt(first_round, resumed=point is not None)
    stamps = keeps_client_state(cfg)
    if privacy is not None:
        privacy.replay(history)
    if clock is not None:
        clock.replay(history)
    _inform_selection(cfg, strategy, run_dir, history, clock)

    evaluate_start(cfg, server, run_dir, history, observer)
    observer.on_run_start(first_round, cfg.federation.rounds)
    for server_round in range(first_round, cfg.federation.rounds + 1):
        started = time.perf_counter()
        lr = round_lr(cfg, server_round)
        selection_seed = privacy.selection_seed(server_round) if privacy is not None else None
        selection, instructions = strategy.configure_fit(
            server_round, state, transport.client_sizes, lr, selection_seed
        )
        if privacy is not None:
            instructions = privacy.instruct(instructions)
        if stamps:  # the round, for the clients' stores (client.state)
            stamp = dataclasses.replace(attempt, server_round=server_round)
            instructions = stamp_instructions(instructions, stamp)
        observer.on_round_start(server_round, selection.participants)
        secure = None  # under secure aggregation: the sum, and no update per client
        if cfg.privacy.secure_aggregation:
            if too_few_to_hide(instructions):
                log.warning(
                    "round %d: %d clients drawn, fewer than secure aggregation needs; none "
                    "trains this round",
                    server_round,
                    len(instructions),
                )
                instructions = []
            secure = fit_secure(cfg, transport, instructions, server_round)
            updates, answered = [], secure.clients
        else:
            updates = transport.fit(instructions, server_round)
            answered = [update.client_id for update in updates]
        fit_done = time.perf_counter()
        timing = clock.time_round(updates) if clock is not None else None
        late = set(timing.late) if timing is not None else set()
        # Clients past federation.deadline were heard from too late: dropped, not failed.
        kept = [u for u in updates if u.client_id not in late]
        waited = [i for i in instructions if i.client_id not in late]
        answered = [c for c in answered if c not in late]
        aggregation: dict[str, Any] = {}
        release = privacy is not None and privacy.plan.level == "client"
        if enough_replies(cfg, server_round, selection, waited, answered, release):
            replies = kept
            if secure is not None:
                replies = [weighted_mean(state, secure)]
                if privacy is not None:
                    replies = privacy.secure_input(server_round, state, secure)
            elif privacy is not None:
                replies = privacy.aggregation_input(server_round, state, kept)
            state, aggregated = strategy.aggregate_fit(server_round, state, replies)
            aggregation.update(aggregated)
            if secure is not None:
                aggregation["secure_aggregation"] = public_metrics(secure, privacy is not None)
        else:
            aggregation["skipped"] = (
                f"{len(kept)} of federation.min_fit_clients="
                f"{cfg.federation.min_fit_clients} clients replied; global adapter unchanged"
            )
        aggregate_done = time.perf_counter()
        evaluation = None
        if strategy.evaluates_global:
            evaluation = evaluate_round(cfg, server, state, server_round, observer)
        else:
            aggregation["personalization"] = NOT_EVALUATED.format(cfg.personalization.method)
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
            dropped_clients=selection.dropped,
            client_metrics={u.client_id: u.metrics for u in updates},
            communication=communication_totals(updates)
            if secure is None
            else {
                "bytes_down": int(secure.metrics["bytes_down"]),
                "bytes_up": int(secure.metrics["bytes_up"]),
            },
            aggregation=aggregation,
            system=clock.record(server_round, timing, updates) if clock and timing else {},
        ).to_json()
        if privacy is not None:
            record = privacy.public_record(record)
            record["privacy"] = privacy.round_metrics()
        server.save_adapter(state, run_dir.round_dir(server_round))
        history.append(record)
        strategy.selection_context.observe(record)
        run_dir.write_metrics(history)
        run_dir.complete_round(server_round, strategy.state_dict())
        log.info("round %d/%d: %s", server_round, cfg.federation.rounds, _summary(record))
        observer.on_round_end(record)
    if privacy is not None:
        log.info("%s", privacy.final_line())
    return state, history


def _inform_selection(
    cfg: Config,
    strategy: Strategy,
    run_dir: RunDir,
    history: list[dict[str, Any]],
    clock: Clock | None,
) -> None:
    """What oort, fastest and diverse select from: past rounds, the clock, the partition."""
    context = strategy.selection_context
    for record in history:
        context.observe(record)
    context.time_of = clock.expected_seconds if clock is not None else None
    if cfg.federation.selection == "diverse":  # partition.json: examples per client and category
        partition = run_dir.path / "partition.json"
        context.categories = category_counts(json.loads(partition.read_text(encoding="utf-8")))


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
    parts = [f"clients {record['selected_clients']}"] if "selected_clients" in record else []
    if losses:
        parts.append(f"train loss {sum(losses) / len(losses):.4f}")
    evaluation = record.get("eval") or {}
    if "loss" in evaluation:
        parts.append(f"eval loss {evaluation['loss']:.4f}")
    if "accuracy" in evaluation:
        parts.append(f"accuracy {evaluation['accuracy']:.3f}")
    if "backdoor_asr" in evaluation:
        parts.append(f"backdoor ASR {evaluation['backdoor_asr']:.2f}")
    parts.append(f"{sum(record['seconds'].values()):.1f}s")
    return ", ".join(parts)
