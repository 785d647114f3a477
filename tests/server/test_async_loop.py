"""FedBuff (strategy.name=fedbuff): staleness weights, a worked event sequence, the server step."""

from __future__ import annotations

import math

import pytest
import torch

from fedit.config import load_config
from fedit.server.async_loop import BufferedRun
from fedit.server.clock import SimulatedClock
from fedit.server.inflight import Queue
from fedit.server.profiles import ClientProfile
from fedit.strategy import build_strategy
from fedit.strategy.fedbuff import buffered_step, staleness_weight
from fedit.types import ClientUpdate, FitInstruction


def test_staleness_weights_by_hand():
    assert [staleness_weight(s) for s in (0, 1, 3, 8)] == pytest.approx([1, 2**-0.5, 0.5, 1 / 3])
    assert staleness_weight(3, "inverse") == 0.25 and staleness_weight(7, "constant") == 1.0
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight(-1)


def test_the_server_step_divides_by_the_buffer_size():
    # x = 1, Δ = 2 (fresh) and 4 (one version old), η = 0.5, K = 2:
    # x + 0.5 · (1 · 2 + 4/√2) / 2 = 1 + 0.5 + 1/√2
    x = {"w": torch.tensor([1.0])}
    deltas = [{"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}]
    weights = [staleness_weight(0), staleness_weight(1)]
    stepped = buffered_step(x, deltas, weights, server_lr=0.5)
    assert stepped["w"].item() == pytest.approx(1.5 + 2**-0.5, rel=1e-6)


class PlusOne:
    """A transport whose client c trains ``tokens[c]`` tokens and moves every weight by +1."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens
        self.started: list[tuple[int, float]] = []  # (client, the w it started from)

    @property
    def client_sizes(self) -> list[int]:
        return [1] * len(self.tokens)

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        (instruction,) = instructions
        client, start = instruction.client_id, instruction.state["w"]
        self.started.append((client, start.item()))
        metrics = {"tokens": self.tokens[client], "bytes_down": 0, "bytes_up": 0}
        return [ClientUpdate(client, {"w": start + 1.0}, 1, 0.0, 1, metrics)]


def test_a_worked_event_sequence():
    """Two clients at 1 token/s, training 2 and 5 tokens; K = 1, both always busy.

    t=2  client 0 (from v0) arrives: τ=0, x1 = 0 + 1 = 1;           it restarts from x1
    t=4  client 0 (from v1) arrives: τ=0, x2 = 1 + 1 = 2;           it restarts from x2
    t=5  client 1 (from v0) arrives: τ=2, x3 = 2 + 1/√3;            it restarts from x3
    t=6  client 0 (from v2) arrives: τ=1, x4 = x3 + 1/√2
    """
    cfg = load_config(
        None,
        [
            "strategy.name=fedbuff",
            "federation.system.profiles=sampled",
            "federation.num_clients=2",
            "federation.concurrency=2",
            "strategy.buffer_size=1",
        ],
    )
    profiles = [ClientProfile(1.0, 1.0, 1.0)] * 2
    transport = PlusOne(tokens=[2, 5])
    clock = SimulatedClock(profiles, seed=0)
    strategy = build_strategy(cfg)
    run = BufferedRun(cfg, transport, strategy, clock, {"w": torch.zeros(1)}, 0, Queue())
    seen = []
    for _ in range(4):
        (arrived,) = run.collect()
        aggregation = run.aggregate([arrived])
        seen.append((clock.elapsed, arrived.client_id, aggregation["staleness"], run.state["w"]))
    x3 = 2 + 1 / math.sqrt(3)
    assert [s[:3] for s in seen] == [
        (2.0, 0, {"0": 1}),
        (4.0, 0, {"0": 1}),
        (5.0, 1, {"2": 1}),
        (6.0, 0, {"1": 1}),
    ]
    assert [s[3].item() for s in seen] == pytest.approx([1, 2, x3, x3 + 1 / math.sqrt(2)])
    assert sorted(transport.started[:2]) == [(0, 0.0), (1, 0.0)]
    assert [client for client, _ in transport.started[2:]] == [0, 0, 1, 0]
    starts = [start for _, start in transport.started[2:]]
    assert starts == pytest.approx([1.0, 2.0, x3, x3 + 1 / math.sqrt(2)])
