"""Measured time: a deployment's rounds timed by the wall clock instead of by profiles.

With ``federation.system.profiles=measured`` (``engine=flower`` only), every client is its own
machine, so the server times what really happened rather than simulating it. For each reply::

    compute = the client's own training seconds (its reply's ``seconds``)
    network = round trip - compute   (both transfers, the SuperLink's queues, the app's start)
    total   = round trip              (the server's wall clock, push to pull)

and a round lasts from pushing its instructions to the last reply, or to the timeout. With
``federation.deadline`` the timeout *is* the deadline (``engines.flower.fit_timeout``): the
clients not heard from by then missed it. Their download is counted as wasted; what they
trained and would have uploaded never reaches the server, so it cannot be counted. The
transport (``engines.flower.FlowerTransport``) measures; this module only reads its
``last_exchange`` and keeps the records in the simulated clock's shape (docs/systems.md).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Protocol

from fedit.config import Config, ConfigError
from fedit.server.clock import RoundTiming, system_record
from fedit.types import ClientUpdate


@dataclass
class Exchange:
    """How a deployed round's exchange went, timed by the server."""

    seconds: float  # from pushing the instructions to the last reply, or to the timeout
    unanswered: dict[int, int]  # client -> bytes sent, for the instructions nothing answered
    timeout: float  # how long the server was prepared to wait


class TimedTransport(Protocol):
    """A transport that times its exchanges (``FlowerTransport``)."""

    last_exchange: Exchange | None


@dataclass(frozen=True)
class MeasuredTime:
    """One client's measured seconds in a round."""

    compute: float
    network: float

    @property
    def total(self) -> float:
        return self.compute + self.network

    def as_record(self) -> dict[str, float]:
        return {"compute": self.compute, "network": self.network, "total": self.total}


def measured_time(update: ClientUpdate) -> MeasuredTime:
    """Split a reply's round trip into the client's training and everything else."""
    total = float(update.metrics["round_trip_seconds"])
    compute = min(float(update.metrics.get("seconds", 0.0)), total)
    return MeasuredTime(compute, total - compute)


class MeasuredClock:
    """The wall-clock counterpart of ``SimulatedClock``: the same records and selection hooks."""

    def __init__(self, source: TimedTransport, num_clients: int, deadline: float | None):
        self.source = source
        self.num_clients = num_clients
        self.deadline = deadline
        self.elapsed = 0.0
        self.last: dict[int, float] = {}  # each client's last measured total, for selection
        self._wasted_down = 0  # bytes sent this round to the clients that missed the deadline

    @classmethod
    def for_transport(cls, cfg: Config, transport: object) -> MeasuredClock:
        """The clock of a run whose transport times its exchanges.

        Raises:
            ConfigError: the transport does not measure (not a Flower deployment).
        """
        if not hasattr(transport, "last_exchange"):
            raise ConfigError(
                "federation.system.profiles=measured: this engine does not time its clients "
                "on their own machines; use engine=flower, or profiles=sampled or csv"
            )
        return cls(transport, cfg.federation.num_clients, cfg.federation.deadline)

    def online(self, server_round: int) -> list[int]:
        """Every client: whether a real one is online shows in whether it answers."""
        return list(range(self.num_clients))

    def expected_seconds(self, client: int, bytes_down: int, tokens: int, bytes_up: int) -> float:
        """The client's last measured time; unmeasured, the median of those measured (or 0)."""
        if client in self.last:
            return self.last[client]
        return statistics.median(self.last.values()) if self.last else 0.0

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Continue a resumed run's clock, and its clients' last times, from its records."""
        for record in history:
            if "system" not in record:
                continue
            self.elapsed = float(record["system"]["elapsed"])
            for client, times in record["system"]["clients"].items():
                self.last[int(client)] = float(times["total"])

    def time_round(self, updates: list[ClientUpdate]) -> RoundTiming:
        """Time the round the transport just exchanged, and advance the clock by it."""
        exchange = self.source.last_exchange
        if exchange is None:  # no training exchange this round (no instructions)
            exchange = Exchange(0.0, {}, 0.0)
        times = {u.client_id: measured_time(u) for u in updates}
        self.last.update({c: t.total for c, t in times.items()})
        late = sorted(exchange.unanswered) if self.deadline is not None else []
        self._wasted_down = sum(exchange.unanswered[c] for c in late)
        self.elapsed += exchange.seconds
        self.source.last_exchange = None
        return RoundTiming(times, late, exchange.seconds)

    def record(
        self, server_round: int, timing: RoundTiming, updates: list[ClientUpdate]
    ) -> dict[str, Any]:
        """The round's ``system`` entry in metrics.jsonl: measured seconds (docs/systems.md)."""
        record = system_record(timing, self.elapsed, self.num_clients)
        if self.deadline is not None:
            record["late"] = timing.late
            # the late replies never arrive: only what was sent to them is known
            record["wasted"] = {"bytes_down": self._wasted_down}
        return record
