"""The simulated clock's own cost (``systems.py --clock-cost``), training stubbed out.

A synchronous round (who is online, the draw, ``SimulatedClock.time_round``, the JSON record) and
a fedbuff aggregation (``BufferedRun``'s event queue and slot draws) timed over 1,000 clients
whose replies come at once with synthetic work.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
from common import QUICKSTART

from fedit.config import load_config
from fedit.server.clock import SimulatedClock
from fedit.server.profiles import load_profiles


class _StubTransport:
    """Replies at once with synthetic work: the clock's cost without any training."""

    def __init__(self, num_clients: int, seed: int = 0):
        from fedit.types import ClientUpdate

        rng = np.random.default_rng(seed)
        self.client_sizes = [int(s) for s in rng.integers(10, 60, num_clients)]
        self.updates = [
            ClientUpdate(
                client_id=c,
                state={},
                num_examples=self.client_sizes[c],
                train_loss=1.0,
                num_steps=6,
                metrics={
                    "tokens": int(rng.integers(2_000, 6_000)),
                    "bytes_down": 3_400_000,
                    "bytes_up": 3_400_000 + int(rng.integers(0, 100)),
                },
            )
            for c in range(num_clients)
        ]

    def fit(self, instructions: list[Any], server_round: int) -> list[Any]:
        return [self.updates[i.client_id] for i in instructions]


class _StubFedBuff:
    """FedBuff's hooks with no tensors: instruct, delta and step cost nothing."""

    def instruct(self, version: int, state: Any, client_id: int, lr: float) -> Any:
        return argparse.Namespace(client_id=client_id)

    def delta(self, state: Any, reply: Any) -> dict:
        return {}

    def aggregate_buffer(self, state: Any, deltas: list, staleness: list) -> tuple[Any, dict]:
        return state, {"mean_staleness_weight": 1.0}


def _ms_per(function, repeats: int) -> float:
    started = time.perf_counter()
    for index in range(repeats):
        function(index + 1)
    return (time.perf_counter() - started) / repeats * 1e3


def time_sync_round(
    transport: _StubTransport, per_round: int, deadline: float | None, repeats: int
) -> float:
    """Milliseconds per synchronous round: online draw, selection, clock, the JSON record."""
    num_clients = len(transport.updates)
    cfg = load_config(
        QUICKSTART,
        [
            f"federation.num_clients={num_clients}",
            "federation.system.profiles=sampled",
            "federation.system.availability=0.8",
        ],
    )
    profiles = load_profiles(cfg.federation.system, num_clients, cfg.seed)
    clock = SimulatedClock(profiles, cfg.seed, deadline=deadline)
    rng = np.random.default_rng(0)

    def one_round(server_round: int) -> None:
        online = clock.online(server_round)
        chosen = rng.choice(online, size=min(per_round, len(online)), replace=False)
        updates = [transport.updates[int(c)] for c in chosen]
        timing = clock.time_round(updates)
        json.dumps(clock.record(server_round, timing, updates))

    return _ms_per(one_round, repeats)


def time_fedbuff(
    transport: _StubTransport, concurrency: int, buffer_size: int, repeats: int
) -> float:
    """Milliseconds per fedbuff aggregation: the event queue and slot draws, tensors stubbed."""
    from fedit.server.async_loop import BufferedRun
    from fedit.server.inflight import Queue

    cfg = load_config(
        QUICKSTART,
        [
            f"federation.num_clients={len(transport.updates)}",
            "federation.system.profiles=sampled",
            "strategy.name=fedbuff",
            f"federation.concurrency={concurrency}",
            f"strategy.buffer_size={buffer_size}",
        ],
    )
    clock = SimulatedClock.from_config(cfg)
    if clock is None:
        raise RuntimeError("federation.system.profiles=sampled gave no clock")
    run = BufferedRun(cfg, transport, _StubFedBuff(), clock, {}, 0, Queue())  # type: ignore[arg-type]
    return _ms_per(lambda _: run.aggregate(run.collect()), repeats)


def clock_cost(num_clients: int = 1_000, repeats: int = 200) -> str:
    """Milliseconds per simulated round (sync) and per aggregation (fedbuff), training stubbed."""
    # Each round with a deadline logs who missed it; printing 200 such lines is not the clock.
    logging.getLogger("fedit.server.clock").setLevel(logging.ERROR)
    transport = _StubTransport(num_clients)
    rows = []
    for per_round in (10, 100, 1_000):
        for deadline in (None, 60.0):
            label = "none" if deadline is None else f"{deadline:g} s"
            ms = time_sync_round(transport, per_round, deadline, repeats)
            rows.append(("synchronous round", per_round, label, ms))
    for concurrency, buffer_size in ((10, 5), (100, 50), (500, 100)):
        ms = time_fedbuff(transport, concurrency, buffer_size, repeats)
        rows.append(("fedbuff aggregation", buffer_size, f"concurrency {concurrency}", ms))
    lines = [
        f"{num_clients:,} clients with sampled profiles (availability 0.8 for the synchronous "
        "rows), training replaced by a stub that replies at once with synthetic tokens and "
        f"bytes; mean over {repeats} consecutive rounds or aggregations. A synchronous round: "
        "who is online, a uniform draw among them, `SimulatedClock.time_round` and the round's "
        "`system` record serialised to JSON (the deadline's warning log line silenced). A "
        "fedbuff aggregation: `BufferedRun.collect` and `aggregate` (the event queue, slot "
        "draws and staleness), with the strategy's tensor work stubbed.",
        "",
        "| step | clients per round (at most those online) / K | deadline or concurrency "
        "| ms per step |",
        "|---|---:|---|---:|",
    ]
    lines += [f"| {kind} | {m:,} | {label} | {ms:.2f} |" for kind, m, label, ms in rows]
    return "\n".join(lines)
