"""Client system profiles: compute speed, bandwidth and availability, drawn or read from CSV.

A profile is what the simulated clock (``server.clock``) needs to time a client's round. With
``federation.system.profiles=sampled`` they are seeded draws, the same for the same seed:
speeds log-normal around ``speed_median`` with spread ``speed_sigma``, and one bandwidth tier
per client drawn with ``tier_weights``. With ``profiles=csv`` they are one row per client.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedit.config import ConfigError, SystemConfig
from fedit.config.system import PROFILE_COLUMNS

# Seed-sequence tag of the profile draws, apart from selection's and training's streams.
_PROFILE_STREAM = 30


@dataclass(frozen=True)
class ClientProfile:
    """One client's simulated system: speeds in tokens and bytes per second."""

    tokens_per_second: float
    down_bytes_per_second: float
    up_bytes_per_second: float
    availability: float = 1.0  # probability of being online at a round's selection


def load_profiles(system: SystemConfig, num_clients: int, seed: int) -> list[ClientProfile]:
    """Every client's profile, index = client id, from ``federation.system``.

    Raises:
        ConfigError: a CSV that cannot be read or does not describe each client once.
    """
    if system.profiles == "csv":
        return read_profiles(Path(system.csv or ""), num_clients, system.availability)
    return draw_profiles(system, num_clients, seed)


def draw_profiles(system: SystemConfig, num_clients: int, seed: int) -> list[ClientProfile]:
    """Seeded draws: log-normal speeds, one bandwidth tier per client."""
    rng = np.random.default_rng([seed, _PROFILE_STREAM])
    speeds = system.speed_median * np.exp(system.speed_sigma * rng.standard_normal(num_clients))
    weights = np.asarray(system.tier_weights, dtype=np.float64)
    tiers = rng.choice(len(weights), size=num_clients, p=weights / weights.sum())
    return [
        ClientProfile(
            float(speeds[client]),
            float(system.down_tiers[tier]),
            float(system.up_tiers[tier]),
            system.availability,
        )
        for client, tier in enumerate(tiers)
    ]


def read_profiles(path: Path, num_clients: int, default_availability: float) -> list[ClientProfile]:
    """One profile per client from a CSV file (``PROFILE_COLUMNS``; availability optional).

    Raises:
        ConfigError: one line naming the file, and the row and column where one is at fault.
    """
    where = f"federation.system.csv {path}"
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{where}: cannot read it ({err})") from None
    unknown = [c for c in columns if c not in PROFILE_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown column {unknown[0]!r}; the columns are {', '.join(PROFILE_COLUMNS)}"
        )
    missing = [c for c in PROFILE_COLUMNS[:4] if c not in columns]
    if missing:
        raise ConfigError(f"{where}: no column {missing[0]!r}")
    profiles: dict[int, ClientProfile] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if None in row:  # DictReader's key for values beyond the header
            raise ConfigError(f"{where}:{line}: more values than the header's columns")
        client = _number(row, "client_id", f"{where}:{line}")
        if not client.is_integer() or not 0 <= client < num_clients:
            raise ConfigError(
                f"{where}:{line}: client_id {row['client_id']!r} is not in "
                f"0..{num_clients - 1} (federation.num_clients={num_clients})"
            )
        if int(client) in profiles:
            raise ConfigError(f"{where}:{line}: client {int(client)} has a second row")
        values = [_number(row, c, f"{where}:{line}") for c in PROFILE_COLUMNS[1:4]]
        for column, value in zip(PROFILE_COLUMNS[1:4], values, strict=True):
            if value <= 0:
                raise ConfigError(f"{where}:{line}: {column} must be > 0, got {value:g}")
        availability = default_availability
        if row.get("availability") not in (None, ""):
            availability = _number(row, "availability", f"{where}:{line}")
            if not 0 < availability <= 1:
                raise ConfigError(f"{where}:{line}: availability must be in (0, 1]")
        speed, down, up = values
        profiles[int(client)] = ClientProfile(speed, down, up, availability)
    absent = [c for c in range(num_clients) if c not in profiles]
    if absent:
        raise ConfigError(f"{where}: no row for client {absent[0]} (one row per client)")
    return [profiles[c] for c in range(num_clients)]


def _number(row: dict[str, str | None], column: str, where: str) -> float:
    raw = row.get(column)
    try:
        value = float(raw or "")
    except ValueError:
        raise ConfigError(f"{where}: {column} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {column} {raw!r} is not a finite number")
    return value
