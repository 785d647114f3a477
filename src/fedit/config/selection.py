"""Config for selection that uses the server's records: ``federation.oort`` and the refusals.

``federation.selection=oort`` (Lai et al., OSDI 2021), ``fastest`` and ``diverse`` pick clients
from what the server knows of them: recent training losses, data sizes, system profiles, the
partition's categories. ``docs/systems.md`` has the formulas; the defaults are the Oort
repository's (FedScale's ``--exploration_factor`` ... ``--cut_off_util``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedit.config.fields import option

# Selections that read a client's own data or replies (losses, sizes, categories).
DATA_SELECTIONS = ("oort", "diverse")


@dataclass
class OortConfig:
    """Oort's guided participant selection (federation.selection=oort; Lai et al. 2021)."""

    exploration_factor: float = option(
        0.9, "oort: share of a round given to clients never heard from (epsilon), at round 1"
    )
    exploration_decay: float = option(
        0.98, "oort: epsilon is multiplied by this every round, down to exploration_min"
    )
    exploration_min: float = option(0.3, "oort: the floor of epsilon")
    round_threshold: float = option(
        30.0,
        "oort: the round's preferred duration T is this percentile of the candidates' "
        "expected durations (needs federation.system)",
    )
    round_penalty: float = option(
        2.0, "oort: alpha of the system penalty (T / t_i)^alpha for a client slower than T"
    )
    cut_off_util: float = option(
        0.05,
        "oort: sample among clients whose utility is at least (1 - cut_off_util) times the "
        "k-th best, with probability proportional to utility",
    )

    def validate(self) -> list[str]:
        key = "federation.oort"
        problems = []
        for name in ("exploration_factor", "exploration_min", "cut_off_util"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{key}.{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.exploration_decay <= 1:
            problems.append(
                f"{key}.exploration_decay: must be in (0, 1], got {self.exploration_decay}"
            )
        if not 0 <= self.round_threshold <= 100:
            problems.append(
                f"{key}.round_threshold: a percentile in [0, 100], got {self.round_threshold}"
            )
        if self.round_penalty < 0:
            problems.append(f"{key}.round_penalty: must be >= 0, got {self.round_penalty}")
        return problems


def selection_conflicts(selection: str, privacy_level: str, secure_aggregation: bool) -> list[str]:
    """Selections refused under DP or secure aggregation, in one line each.

    The accountant assumes clients are sampled independently of their data; a selection that
    reads losses, sizes or categories breaks that. Oort also needs each client's loss, which
    secure aggregation keeps from the server.
    """
    if selection in DATA_SELECTIONS and privacy_level != "none":
        return [
            f"federation.selection={selection}: refused with privacy.level={privacy_level}; it "
            "picks clients by their own data, which breaks the sampling the accountant assumes; "
            "use federation.selection=poisson or random"
        ]
    if selection == "oort" and secure_aggregation:
        return [
            "federation.selection=oort: refused with privacy.secure_aggregation=true; it needs "
            "each client's training loss, which secure aggregation keeps from the server"
        ]
    return []


def selection_engine_problems(selection: str, engine: str) -> list[str]:
    """``diverse`` needs the partition, which a Flower deployment's server does not hold."""
    if selection == "diverse" and engine == "flower":
        return [
            "federation.selection=diverse: on engine=flower each site holds its own data and the "
            "server does not know its clients' categories; use it with engine=simulation or "
            "flower-simulation"
        ]
    return []
