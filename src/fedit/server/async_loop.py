"""Asynchronous buffered aggregation on the simulated clock (``strategy.name=fedbuff``).

``federation.concurrency`` clients train at once. A client starts from the global version of
that moment: it is trained in-process right then, and its reply's real tokens and bytes give,
through the clock, the simulated time it arrives. Replies arrive in (time, seeded tiebreak)
order into a buffer; every ``strategy.buffer_size`` of them, the strategy steps the global
adapter (``strategy.fedbuff``). A slot that frees starts a new client, drawn (seeded) among the
idle ones that have no update in the buffer; when none is left it waits for the next step.

A "round" of ``metrics.jsonl`` is one aggregation: its buffer, its staleness histogram and the
simulated time it happened; each writes a checkpoint with the waiting clients
(``server.inflight``), so resume is exact. The pieces are the round loop's: evaluation, records,
checkpoints. docs/systems.md has the rules.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np

from fedit.config import Config
from fedit.server.checkpoint import RunDir
from fedit.server.clock import SimulatedClock, client_time
from fedit.server.inflight import InFlight, Queue
from fedit.server.loop import RoundFailedError, evaluate_round, evaluate_start, round_lr
from fedit.server.observer import RunObserver
from fedit.server.protocols import ServerModel, Transport
from fedit.strategy.base import Strategy
from fedit.strategy.fedbuff import FedBuff
from fedit.strategy.selection import num_selected
from fedit.types import AdapterState, RoundResult

log = logging.getLogger(__name__)

_DRAW_STREAM = 37  # seed-sequence tag of the draws that fill free slots


class BufferedRun:
    """The state between aggregations: the global adapter, its version and the queue."""

    def __init__(
        self,
        cfg: Config,
        transport: Transport,
        strategy: FedBuff,
        clock: SimulatedClock,
        state: AdapterState,
        version: int,
        queue: Queue,
    ):
        self.cfg = cfg
        self.transport = transport
        self.strategy = strategy
        self.clock = clock
        self.state = state
        self.version = version
        self.queue = queue
        self.buffer: list[InFlight] = []
        sizes = transport.client_sizes
        federation = cfg.federation
        per_round = num_selected(len(sizes), federation.fraction_fit, federation.min_fit_clients)
        self.concurrency = federation.concurrency or per_round
        self.buffer_size = cfg.strategy.buffer_size or self.concurrency

    def idle(self) -> list[int]:
        """Clients that may start now: not training, not in the buffer, not failed this step."""
        busy = {i.client_id for i in self.queue.waiting + self.buffer} | set(self.queue.failed)
        return [c for c in range(len(self.transport.client_sizes)) if c not in busy]

    def fill(self) -> None:
        """Start clients until ``concurrency`` train, or no idle client is left."""
        while len(self.queue.waiting) < self.concurrency and self.idle():
            rng = np.random.default_rng([self.cfg.seed, self.queue.draws, _DRAW_STREAM])
            client_id = int(rng.choice(self.idle()))
            self._start(client_id, self.queue.draws, float(rng.random()))
            self.queue.draws += 1

    def _start(self, client_id: int, draw: int, tiebreak: float) -> None:
        """Train ``client_id`` from the current global adapter and queue its reply."""
        lr = round_lr(self.cfg, self.version + 1)
        instruction = self.strategy.instruct(self.version, self.state, client_id, lr)
        replies = self.transport.fit([instruction], self.version + 1)
        if not replies:
            log.warning("client %d gave no usable reply; its slot draws again", client_id)
            self.queue.failed.append(client_id)
            return
        reply = replies[0]
        metrics = reply.metrics
        times = client_time(
            self.clock.profiles[client_id],
            int(metrics.get("bytes_down", 0)),
            int(metrics.get("tokens", 0)),
            int(metrics.get("bytes_up", 0)),
        )
        item = InFlight(
            draw=draw,
            client_id=client_id,
            version=self.version,
            finish=self.clock.elapsed + times.total,
            tiebreak=tiebreak,
            train_loss=reply.train_loss,
            num_examples=reply.num_examples,
            metrics=dict(metrics),
            times=times.as_record(),
            delta=self.strategy.delta(self.state, reply),
        )
        self.queue.waiting.append(item)

    def collect(self) -> list[InFlight]:
        """Advance the clock until the buffer is full; the buffer, in arrival order."""
        self.fill()
        while len(self.buffer) < self.buffer_size:
            if not self.queue.waiting:
                raise RoundFailedError(
                    f"aggregation {self.version + 1}: {len(self.buffer)} of "
                    f"strategy.buffer_size={self.buffer_size} updates and no client left to "
                    f"train; clients {sorted(self.queue.failed)} gave no usable reply"
                )
            arrived = self.queue.pop_earliest()
            self.clock.elapsed = arrived.finish
            self.buffer.append(arrived)
            if len(self.buffer) < self.buffer_size:
                self.fill()  # the freed slot starts from the same global version
        buffer, self.buffer = self.buffer, []
        return buffer

    def aggregate(self, buffer: list[InFlight]) -> dict[str, Any]:
        """One server step on a full buffer; then free slots start from the new version."""
        staleness = [self.version - item.version for item in buffer]
        deltas = [item.delta for item in buffer]
        self.state, metrics = self.strategy.aggregate_buffer(self.state, deltas, staleness)
        self.version += 1
        self.queue.failed = []
        self.fill()
        histogram = Counter(staleness)
        return {
            **metrics,
            "buffer_size": len(buffer),
            "staleness": {str(s): histogram[s] for s in sorted(histogram)},
            "started_at_version": {str(item.client_id): item.version for item in buffer},
        }


def run_buffered(
    cfg: Config,
    transport: Transport,
    server: ServerModel,
    strategy: Strategy,
    run_dir: RunDir,
    observer: RunObserver | None = None,
    clock: SimulatedClock | None = None,
) -> tuple[AdapterState, list[dict[str, Any]]]:
    """Run (or resume) ``federation.rounds`` aggregations of FedBuff, checkpointing each.

    Args:
        cfg: The experiment (``strategy.name=fedbuff``).
        transport: Reaches the clients; called with one instruction at a time.
        server: The server's model: initial adapter, evaluation, adapter files.
        strategy: A ``FedBuff``.
        run_dir: Where checkpoints and metrics.jsonl go.
        observer: Progress hooks.
        clock: The simulated clock (``federation.system``); required.

    Returns:
        The final global adapter and the metrics history (round 0 is the base model).
    """
    if not isinstance(strategy, FedBuff) or clock is None:
        raise TypeError("run_buffered needs a FedBuff strategy and the simulated clock")
    observer = observer or RunObserver()
    point = run_dir.resume_point() if cfg.resume else None
    history = point.history if point is not None else []
    first_round = point.next_round if point is not None else 1
    run_dir.attempt(first_round, resumed=point is not None)  # run.json counts every attempt
    clock.replay(history)
    if point is not None and point.adapter_dir is not None:
        strategy.load_state_dict(point.strategy_state)
        state, queue = server.load_adapter(point.adapter_dir), Queue.load(point.adapter_dir)
    else:
        state, queue = server.initial_state(), Queue()
    run = BufferedRun(cfg, transport, strategy, clock, state, first_round - 1, queue)
    evaluate_start(cfg, server, run_dir, history, observer)

    observer.on_run_start(first_round, cfg.federation.rounds)
    for server_round in range(first_round, cfg.federation.rounds + 1):
        started = time.perf_counter()
        observer.on_round_start(server_round, sorted(i.client_id for i in queue.waiting))
        previous = clock.elapsed
        buffer = run.collect()
        fit_done = time.perf_counter()
        aggregation = run.aggregate(buffer)
        aggregate_done = time.perf_counter()
        evaluation = evaluate_round(cfg, server, run.state, server_round, observer)
        record = _record(cfg, server_round, buffer, aggregation, evaluation)
        record["seconds"] = {
            "fit": fit_done - started,
            "aggregate": aggregate_done - fit_done,
            "eval": time.perf_counter() - aggregate_done,
        }
        record["system"] = {
            "duration": clock.elapsed - previous,
            "elapsed": clock.elapsed,
            "in_flight": len(queue.waiting),
            "clients": {str(item.client_id): item.times for item in buffer},
        }
        folder = run_dir.round_dir(server_round)
        server.save_adapter(run.state, folder)
        queue.save(folder)
        history.append(record)
        run_dir.write_metrics(history)
        run_dir.complete_round(server_round, strategy.state_dict())
        log.info(
            "aggregation %d/%d at %.1f simulated s: clients %s, staleness %s",
            server_round,
            cfg.federation.rounds,
            clock.elapsed,
            record["selected_clients"],
            aggregation["staleness"],
        )
        observer.on_round_end(record)
    return run.state, history


def _record(
    cfg: Config,
    server_round: int,
    buffer: list[InFlight],
    aggregation: dict[str, Any],
    evaluation: dict[str, Any] | None,
) -> dict[str, Any]:
    """The aggregation's metrics.jsonl record, as a synchronous round's (``RoundResult``)."""
    return RoundResult(
        round=server_round,
        selected_clients=[item.client_id for item in buffer],
        train_loss={item.client_id: item.train_loss for item in buffer},
        num_examples={item.client_id: item.num_examples for item in buffer},
        eval=evaluation,
        seconds={},
        lr=round_lr(cfg, server_round),
        client_metrics={item.client_id: item.metrics for item in buffer},
        communication={
            key: sum(int(item.metrics.get(key, 0)) for item in buffer)
            for key in ("bytes_down", "bytes_up")
        },
        aggregation=aggregation,
    ).to_json()
