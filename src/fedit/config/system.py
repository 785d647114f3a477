"""Config for the simulated clock: each client's compute speed, bandwidth and availability.

Off by default (``federation.system.profiles=none``): no clock, and the records are as before.
``docs/systems.md`` has the formulas and what is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedit.config.fields import check_choice, option

PROFILE_SOURCES = ("none", "sampled", "csv", "measured")
# The columns of federation.system.csv; availability may be left out.
PROFILE_COLUMNS = (
    "client_id",
    "tokens_per_second",
    "down_bytes_per_second",
    "up_bytes_per_second",
    "availability",
)


@dataclass
class SystemConfig:
    """Client system profiles and the simulated clock they drive (docs/systems.md)."""

    profiles: str = option(
        "none",
        "where client profiles come from: none (no simulated clock), sampled (seeded draws "
        "from the keys below), csv (one row per client in federation.system.csv) or measured "
        "(engine=flower: each client's measured wall-clock time instead of a profile)",
    )
    csv: str | None = option(
        None,
        "profiles=csv: a CSV file with columns client_id, tokens_per_second, "
        "down_bytes_per_second, up_bytes_per_second and optionally availability",
    )
    speed_median: float = option(
        1000.0, "sampled: median compute speed, trained tokens per second (log-normal)"
    )
    speed_sigma: float = option(
        0.7, "sampled: standard deviation of log(tokens per second); 0 makes every client equal"
    )
    down_tiers: list[float] = option(
        [1.25e6, 6.25e6, 2.5e7],
        "sampled: download bandwidth of each tier, bytes per second (10, 50, 200 Mbit/s)",
    )
    up_tiers: list[float] = option(
        [2.5e5, 1.25e6, 6.25e6],
        "sampled: upload bandwidth of each tier, bytes per second (2, 10, 50 Mbit/s)",
    )
    tier_weights: list[float] = option(
        [0.3, 0.4, 0.3], "sampled: probability that a client falls in each bandwidth tier"
    )
    availability: float = option(
        1.0,
        "probability that a client is online when a round selects (with "
        "availability_period: the fraction of each period it is online); a CSV's "
        "availability column overrides it per client",
    )
    availability_period: int = option(
        0,
        "rounds in a periodic on/off pattern, each client at its own seeded phase; "
        "0: each round is drawn independently",
    )

    @property
    def enabled(self) -> bool:
        """Whether the run has profiles, hence a simulated clock."""
        return self.profiles != "none"

    def validate(self) -> list[str]:
        key = "federation.system"
        problems = check_choice(f"{key}.profiles", self.profiles, PROFILE_SOURCES)
        if self.profiles == "csv" and not self.csv:
            problems.append(f"{key}.csv: profiles=csv needs the file's path")
        if self.csv and self.profiles != "csv":
            problems.append(f"{key}.csv: set only with {key}.profiles=csv")
        if self.speed_median <= 0:
            problems.append(f"{key}.speed_median: must be > 0, got {self.speed_median}")
        if self.speed_sigma < 0:
            problems.append(f"{key}.speed_sigma: must be >= 0, got {self.speed_sigma}")
        tiers = (self.down_tiers, self.up_tiers, self.tier_weights)
        if not self.down_tiers or len({len(t) for t in tiers}) != 1:
            problems.append(
                f"{key}.down_tiers, up_tiers, tier_weights: need one entry per tier each, "
                f"got {len(self.down_tiers)}, {len(self.up_tiers)}, {len(self.tier_weights)}"
            )
        if any(b <= 0 for b in (*self.down_tiers, *self.up_tiers)):
            problems.append(f"{key}.down_tiers / up_tiers: bandwidths must be > 0 bytes/s")
        if any(w < 0 for w in self.tier_weights) or sum(self.tier_weights) <= 0:
            problems.append(f"{key}.tier_weights: must be >= 0 with a positive sum")
        if not 0 < self.availability <= 1:
            problems.append(f"{key}.availability: must be in (0, 1], got {self.availability}")
        if self.availability_period < 0:
            problems.append(
                f"{key}.availability_period: must be >= 0 rounds, got {self.availability_period}"
            )
        return problems

    def engine_problems(self, engine: str) -> list[str]:
        """Measured times are real only where every client is its own machine."""
        key = "federation.system"
        if self.profiles != "measured":
            return []
        problems = []
        if engine != "flower":
            problems.append(
                f"{key}.profiles=measured: times real clients on their own machines, which "
                f"only engine=flower has (engine={engine} trains every client on this machine); "
                "use profiles=sampled or csv"
            )
        if self.availability != 1 or self.availability_period != 0:
            problems.append(
                f"{key}.availability: profiles=measured times real clients, which are online "
                "or not on their own; leave availability at 1 and availability_period at 0"
            )
        return problems

    def conflicts(self, privacy_level: str, secure_aggregation: bool) -> list[str]:
        """Refused combinations: the clock needs each client's tokens and bytes in the clear."""
        if not self.enabled or (privacy_level == "none" and not secure_aggregation):
            return []
        setting = "privacy.secure_aggregation" if secure_aggregation else "privacy.level"
        return [
            f"federation.system.profiles: the simulated clock times each client from its own "
            f"token count, which {setting} keeps from the server (and a client's time would "
            f"tell its data size); use federation.system.profiles=none with {setting}"
        ]
