"""The simulated clock: how long each round would take on the clients' own systems.

With ``federation.system`` profiles (``server.profiles``), a client's time in a round is::

    download = bytes_down / down_bytes_per_second      (the instruction, as sent)
    compute  = tokens / tokens_per_second              (its real trained tokens, no padding)
    upload   = bytes_up / up_bytes_per_second          (its reply, as received)

and a synchronous round lasts as long as its slowest client: the maximum over its clients of
download + compute + upload. With ``federation.deadline``, the clients whose time exceeds it
are dropped, their tokens and bytes counted as wasted, and the round lasts the deadline.
Bytes and tokens are what the engines already count (``ClientUpdate.metrics``), so the clock is
the same whichever engine trained. Who is online when a round selects comes from each
profile's availability: a seeded draw per round, or a periodic on/off pattern.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedit.config import Config
from fedit.server.profiles import ClientProfile, load_profiles
from fedit.types import ClientUpdate

log = logging.getLogger(__name__)

# Seed-sequence tags: who is online in a round, and each client's phase in a periodic pattern.
_ONLINE_STREAM = 3
_PHASE_STREAM = 31


@dataclass(frozen=True)
class ClientTime:
    """One client's simulated seconds in a round."""

    download: float
    compute: float
    upload: float

    @property
    def total(self) -> float:
        return self.download + self.compute + self.upload

    def as_record(self) -> dict[str, float]:
        return {
            "download": self.download,
            "compute": self.compute,
            "upload": self.upload,
            "total": self.total,
        }


def client_time(profile: ClientProfile, bytes_down: int, tokens: int, bytes_up: int) -> ClientTime:
    """Seconds to receive the instruction, train ``tokens`` tokens and send the reply."""
    return ClientTime(
        download=bytes_down / profile.down_bytes_per_second,
        compute=tokens / profile.tokens_per_second,
        upload=bytes_up / profile.up_bytes_per_second,
    )


@dataclass
class RoundTiming:
    """A synchronous round on the clock: each client's time, who missed the deadline, how long."""

    times: dict[int, Any]  # a ClientTime each, or server.measured's MeasuredTime
    late: list[int]  # over federation.deadline: dropped, their work wasted
    duration: float  # seconds: the slowest client, or the deadline when someone missed it


def time_round(times: dict[int, ClientTime], deadline: float | None = None) -> RoundTiming:
    """The round's duration: the maximum over its clients, or ``deadline`` if any exceed it.

    A client exactly at the deadline makes it.
    """
    late = sorted(c for c, t in times.items() if deadline is not None and t.total > deadline)
    if late and deadline is not None:
        return RoundTiming(times, late, deadline)
    return RoundTiming(times, late, max((t.total for t in times.values()), default=0.0))


def system_record(timing: RoundTiming, elapsed: float, online: int) -> dict[str, Any]:
    """A round's ``system`` entry without the deadline's fields: duration, clients' times."""
    return {
        "duration": timing.duration,
        "elapsed": elapsed,
        "online": online,
        "clients": {str(c): t.as_record() for c, t in sorted(timing.times.items())},
    }


class Clock(Protocol):
    """What the round loop and selection need of a clock: simulated or measured."""

    elapsed: float
    deadline: float | None

    def online(self, server_round: int) -> list[int]: ...

    def expected_seconds(
        self, client: int, bytes_down: int, tokens: int, bytes_up: int
    ) -> float: ...

    def replay(self, history: list[dict[str, Any]]) -> None: ...

    def time_round(self, updates: list[ClientUpdate]) -> RoundTiming: ...

    def record(
        self, server_round: int, timing: RoundTiming, updates: list[ClientUpdate]
    ) -> dict[str, Any]: ...


class SimulatedClock:
    """Profiles, availability and the simulated time a run has spent so far."""

    def __init__(
        self,
        profiles: list[ClientProfile],
        seed: int,
        availability_period: int = 0,
        deadline: float | None = None,
    ):
        self.profiles = profiles
        self.seed = seed
        self.period = availability_period
        self.deadline = deadline
        self.elapsed = 0.0
        # Each client's offset in the on/off pattern, so that not everyone is online together.
        phase_rng = np.random.default_rng([seed, _PHASE_STREAM])
        self.phases = phase_rng.integers(0, max(self.period, 1), len(profiles)).tolist()

    @classmethod
    def from_config(cls, cfg: Config) -> SimulatedClock | None:
        """The run's clock, or None without ``federation.system`` profiles (or with measured).

        Raises:
            ConfigError: the profile CSV is unreadable or does not match the clients.
        """
        system = cfg.federation.system
        if system.profiles in ("none", "measured"):  # measured: server.measured, not profiles
            return None
        profiles = load_profiles(system, cfg.federation.num_clients, cfg.seed)
        return cls(profiles, cfg.seed, system.availability_period, cfg.federation.deadline)

    def online(self, server_round: int) -> list[int]:
        """The clients online when ``server_round`` selects, the same for the same seed."""
        availability = np.array([p.availability for p in self.profiles])
        if self.period > 0:
            on_rounds = np.maximum(1, np.rint(availability * self.period))
            position = (server_round - 1 + np.asarray(self.phases)) % self.period
            return [int(c) for c in np.flatnonzero(position < on_rounds)]
        draws = np.random.default_rng([self.seed, server_round, _ONLINE_STREAM]).random(
            len(self.profiles)
        )
        return [int(c) for c in np.flatnonzero(draws < availability)]

    def expected_seconds(self, client: int, bytes_down: int, tokens: int, bytes_up: int) -> float:
        """Client ``client``'s seconds for a round of this work (oort's and fastest's t_i)."""
        return client_time(self.profiles[client], bytes_down, tokens, bytes_up).total

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Continue a resumed run's clock from its last recorded round."""
        recorded = [r["system"]["elapsed"] for r in history if "system" in r]
        self.elapsed = recorded[-1] if recorded else 0.0

    def time_round(self, updates: list[ClientUpdate]) -> RoundTiming:
        """Time the replies of a round and advance the clock by its duration."""
        times = {
            u.client_id: client_time(
                self.profiles[u.client_id],
                int(u.metrics.get("bytes_down", 0)),
                int(u.metrics.get("tokens", 0)),
                int(u.metrics.get("bytes_up", 0)),
            )
            for u in updates
        }
        timing = time_round(times, self.deadline)
        self.elapsed += timing.duration
        if timing.late:
            log.warning("clients %s missed federation.deadline=%gs", timing.late, self.deadline)
        return timing

    def record(
        self, server_round: int, timing: RoundTiming, updates: list[ClientUpdate]
    ) -> dict[str, Any]:
        """The round's ``system`` entry in metrics.jsonl (seconds; docs/systems.md)."""
        record = system_record(timing, self.elapsed, len(self.online(server_round)))
        if self.deadline is not None:
            late = [u for u in updates if u.client_id in set(timing.late)]
            record["late"] = timing.late
            record["wasted"] = {
                key: sum(int(u.metrics.get(key, 0)) for u in late)
                for key in ("tokens", "bytes_down", "bytes_up")
            }
        return record
