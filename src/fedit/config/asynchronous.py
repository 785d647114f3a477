"""Config checks for asynchronous buffered aggregation (``strategy.name=fedbuff``).

What fedbuff needs and what it cannot be combined with is written here once, one line per
problem (docs/systems.md, "Asynchronous buffered aggregation").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedit.config.schema import Config

# The staleness weight s(τ) of a client that started τ global versions ago
# (fedit.strategy.fedbuff.STALENESS_WEIGHTS implements each).
STALENESS = ("sqrt", "constant", "inverse")


def fedbuff_problems(cfg: Config) -> list[str]:
    """Why ``strategy.name=fedbuff`` cannot run with ``cfg``, one line each ([] if it can)."""
    strategy, federation = cfg.strategy, cfg.federation
    if strategy.name != "fedbuff":
        return []
    key = "strategy.name=fedbuff"
    problems = _size_problems(cfg)
    if strategy.staleness not in STALENESS:
        problems.append(
            f"strategy.staleness: unknown value {strategy.staleness!r}; choose one of "
            + ", ".join(STALENESS)
        )
    if not federation.system.enabled:
        problems.append(
            f"{key}: clients finish on the simulated clock; set "
            "federation.system.profiles=sampled or csv (docs/systems.md)"
        )
    refusals = {
        "privacy.level": (
            cfg.privacy.level != "none",
            "the accountant assumes synchronous rounds of sampled clients",
        ),
        "privacy.secure_aggregation": (
            cfg.privacy.secure_aggregation,
            "a buffer weighs each update by its own staleness, which a masked sum hides",
        ),
        "robust.method": (
            cfg.robust.method != "none",
            "defences judge a synchronous round's replies together",
        ),
        "attack.kind": (cfg.attack.kind != "none", "attacks are simulated in synchronous rounds"),
        "federation.deadline": (
            federation.deadline is not None,
            "a buffer waits for arrivals, not for a deadline; leave federation.deadline unset",
        ),
        "federation.selection": (
            federation.selection != "random",
            "each free slot draws a client uniformly among the idle ones; use random",
        ),
        "engine": (
            cfg.engine == "flower",
            "a Flower deployment is not built yet; use engine=simulation",
        ),
    }
    for name, (refused, why) in refusals.items():
        if refused:
            problems.append(f"{name}={_value(cfg, name)}: not with {key}: {why}")
    return problems


def _size_problems(cfg: Config) -> list[str]:
    strategy, federation = cfg.strategy, cfg.federation
    problems = []
    if strategy.buffer_size is not None and not 1 <= strategy.buffer_size <= federation.num_clients:
        problems.append(
            f"strategy.buffer_size: must be in [1, federation.num_clients="
            f"{federation.num_clients}] (a client is in a buffer at most once), "
            f"got {strategy.buffer_size}"
        )
    concurrency = federation.concurrency
    if concurrency is not None and not 1 <= concurrency <= federation.num_clients:
        problems.append(
            f"federation.concurrency: must be in [1, federation.num_clients="
            f"{federation.num_clients}], got {concurrency}"
        )
    return problems


def _value(cfg: Config, dotted: str) -> object:
    value: object = cfg
    for name in dotted.split("."):
        value = getattr(value, name)
    return value
