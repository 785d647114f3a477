"""A run's privacy budget before round 1: the plan (z calibrated, δ, the threat model), the
ε it would spend over some rounds, and the saved plan of a resumed run checked against it.

Every ε here comes from the plan, never from what clients report: at example level each
client's exposure (its DP-SGD rate and steps in each round it trains) follows from its size
and the public, seeded selection (selection is not part of the example-level guarantee).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedit.client.dpsgd import sample_rate
from fedit.client.train import num_local_steps
from fedit.config import Config, ConfigError
from fedit.privacy.plan import PrivacyPlan, plan_client_level, plan_example_level
from fedit.strategy.selection import build_selector, num_selected

log = logging.getLogger(__name__)

# Client-level DP over fewer clients than this is weak whatever ε says: the run warns.
FEW_CLIENTS = 100


def exposure(cfg: Config, client_sizes: list[int], rounds: int) -> list[tuple[float, int]]:
    """Each client's DP-SGD (Poisson rate, steps) over rounds 1..``rounds`` as planned.

    Example level only: there selection is not part of the guarantee, so it stays seeded from
    (seed, round) and public, and the server knows in advance which rounds each client trains
    in. Client-level selection is secret and never replayed.
    """
    federation = cfg.federation
    selector = build_selector(federation.selection, federation.availability, federation.sample_rate)
    count = num_selected(len(client_sizes), federation.fraction_fit, federation.min_fit_clients)
    times = [0] * len(client_sizes)
    for server_round in range(1, rounds + 1):
        for client in selector(server_round, client_sizes, count, cfg.seed).participants:
            times[client] += 1
    return [
        (sample_rate(cfg.train, max(size, 1)), num_local_steps(cfg.train, size) * t)
        for size, t in zip(client_sizes, times, strict=True)
    ]


def make_plan(cfg: Config, client_sizes: list[int]) -> PrivacyPlan:
    """The run's plan: z calibrated (or taken) for ``federation.rounds`` rounds."""
    if cfg.privacy.level == "client":
        federation = cfg.federation
        count = num_selected(len(client_sizes), federation.fraction_fit, federation.min_fit_clients)
        plan = plan_client_level(cfg, len(client_sizes), count)
    else:
        planned = exposure(cfg, client_sizes, cfg.federation.rounds)
        rates, steps = [q for q, _ in planned], [t for _, t in planned]
        plan = plan_example_level(cfg, client_sizes, rates, steps)
    plan.client_sizes = list(client_sizes)
    plan.secure_aggregation = cfg.privacy.secure_aggregation
    plan.describe_threats()
    # Fails closed before anything is written: an accountant that cannot state ε stops here.
    planned_epsilon(cfg, plan, client_sizes, cfg.federation.rounds)
    if plan.level == "client" and len(client_sizes) < FEW_CLIENTS:
        log.warning(
            "privacy.level=client over %d clients is a weak guarantee: N·δ = %.2g, the chance "
            "that some client's data leaks whole can reach it, and the noise needed for a "
            "useful ε swamps the updates of so few (docs/privacy.md)",
            len(client_sizes),
            len(client_sizes) * plan.delta,
        )
    return plan


def planned_epsilon(cfg: Config, plan: PrivacyPlan, client_sizes: list[int], rounds: int) -> float:
    """ε that ``plan``'s z spends over ``rounds`` planned rounds (the largest client's)."""
    if plan.level == "client":
        return plan.client_epsilon(rounds)
    return max(plan.example_epsilon(q, t) for q, t in set(exposure(cfg, client_sizes, rounds)))


def resumed_plan(cfg: Config, run_dir: Path) -> PrivacyPlan | None:
    """The saved plan of a run being resumed (None without DP), checked against the budget.

    It needs no model and no data (the plan keeps the client sizes it was made for), so a
    resume that asks for more rounds than ``privacy.target_epsilon`` covers is refused first.

    Raises:
        ConfigError: the plan is missing or damaged, or the rounds exceed the budget.
    """
    if cfg.privacy.level == "none":
        return None
    plan = PrivacyPlan.load(run_dir)
    if not plan.threat_model:  # a plan saved before the threat model was
        plan.describe_threats()
    rounds = cfg.federation.rounds
    if plan.target_epsilon is not None and rounds > plan.rounds:
        spent = planned_epsilon(cfg, plan, plan.client_sizes, rounds)
        if spent > plan.target_epsilon * (1 + 1e-6):
            raise ConfigError(
                f"federation.rounds={rounds}: the budget privacy.target_epsilon="
                f"{plan.target_epsilon:g} covers {plan.rounds} rounds and {rounds} would "
                f"spend ε={spent:.3g}; resume with federation.rounds<={plan.rounds}, or "
                "start a new run"
            )
    return plan
