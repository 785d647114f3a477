"""A run's differential privacy on the server: plan, instructions, the private mean, ε so far.

The round loop calls four things, and only when ``privacy.level`` is not ``none``:
``instruct`` puts C and the clients' noise shares into each ``FitConfig``; ``aggregation_input``
turns the replies into what the strategy may average (the noised, unweighted mean at client
level; uniform weights at example level); ``round_metrics`` is the round's ``privacy`` record
in metrics.jsonl; ``final_line`` ends the run. The accountant is rebuilt from the records on
resume, so a resumed run reports the same ε.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from fedit.client.dpsgd import sample_rate
from fedit.client.train import num_local_steps
from fedit.config import Config, ConfigError
from fedit.privacy.mechanism import (
    SERVER_COUNT_NOISE,
    SERVER_UPDATE_NOISE,
    gaussian_noise,
    noise_generator,
    private_mean,
    trained_names,
)
from fedit.privacy.plan import (
    PrivacyPlan,
    epsilon_line,
    plan_client_level,
    plan_example_level,
)
from fedit.strategy.selection import build_selector, num_selected
from fedit.types import AdapterState, ClientUpdate, FitInstruction

log = logging.getLogger(__name__)


def _exposure(cfg: Config, client_sizes: list[int], rounds: int) -> list[tuple[float, int]]:
    """Each client's DP-SGD (Poisson rate, steps) over rounds 1..``rounds`` as planned.

    Selection is seeded from (seed, round) and never looks at the data, so the server knows in
    advance which rounds each client trains in.
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
        exposure = _exposure(cfg, client_sizes, cfg.federation.rounds)
        rates, steps = [q for q, _ in exposure], [t for _, t in exposure]
        plan = plan_example_level(cfg, client_sizes, rates, steps)
    plan.client_sizes = list(client_sizes)
    return plan


def planned_epsilon(cfg: Config, plan: PrivacyPlan, client_sizes: list[int], rounds: int) -> float:
    """ε that ``plan``'s z spends over ``rounds`` planned rounds (the largest client's)."""
    if plan.level == "client":
        return plan.client_epsilon(rounds)
    return max(plan.example_epsilon(q, t) for q, t in _exposure(cfg, client_sizes, rounds))


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


class PrivacyRun:
    """The server's side of DP for one run (see the module docstring)."""

    def __init__(self, cfg: Config, plan: PrivacyPlan):
        self.cfg = cfg
        self.plan = plan
        self.rounds_done = 0
        self.clip_norm = plan.clip_norm
        self.example_steps: dict[int, tuple[float, int]] = {}  # client -> (q_i, steps so far)
        self._epsilons: dict[tuple[float, int], float] = {}
        self._round: dict[str, Any] = {}
        log.info(
            "privacy.level=%s: the mean is unweighted over each round's clients, whatever "
            "strategy.name=%s's weighting says (example counts would raise the sensitivity)",
            plan.level,
            cfg.strategy.name,
        )

    @classmethod
    def start(
        cls, cfg: Config, client_sizes: list[int], resumed: PrivacyPlan | None = None
    ) -> PrivacyRun:
        """A fresh run's calibrated plan, or the ``resumed`` run's (``resumed_plan``).

        Raises:
            ConfigError: calibration failed.
        """
        return cls(cfg, resumed if resumed is not None else make_plan(cfg, client_sizes))

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Rebuild the accountant and the clip from a resumed run's records."""
        for record in history:
            if "privacy" in record:
                self._count_round(record.get("client_metrics", {}))
                self.clip_norm = record["privacy"].get("next_clip_norm", self.clip_norm)

    def instruct(self, instructions: list[FitInstruction]) -> list[FitInstruction]:
        """Each instruction with the round's C and, when the clients add it, their noise share.

        With m instructed clients each adds N(0, z_Δ²C²/m), so the sum carries N(0, z_Δ²C²).
        """
        plan, clip_norm = self.plan, self.clip_norm
        fields: dict[str, Any] = {"dp_level": plan.level, "dp_clip_norm": clip_norm}
        if plan.level == "example":
            fields["dp_noise_multiplier"] = plan.noise_multiplier
        elif plan.noise_at == "clients" and instructions:
            share = math.sqrt(len(instructions))
            fields["dp_update_noise_std"] = plan.update_noise_multiplier * clip_norm / share
            if plan.count_noise_std is not None:
                fields["dp_count_noise_std"] = plan.count_noise_std / share
        trainable = instructions[0].config.trainable if instructions else "all"
        self._round = {
            "clip_norm_used": clip_norm,
            "trainable": trainable,
            "instructed": len(instructions),
        }
        return [
            dataclasses.replace(i, config=dataclasses.replace(i.config, **fields))
            for i in instructions
        ]

    def aggregation_input(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> list[ClientUpdate]:
        """What the strategy may average: one noised unweighted mean, or uniform weights."""
        if self.plan.level == "example":
            examples = sum(int(u.metrics.get("dp_examples", 0)) for u in updates)
            clipped = sum(int(u.metrics.get("dp_examples_clipped", 0)) for u in updates)
            self._round["clipped_fraction"] = clipped / examples if examples else 0.0
            return [dataclasses.replace(u, num_examples=1) for u in updates]
        plan, clip_norm = self.plan, self.clip_norm
        names = trained_names(global_state, self._round.get("trainable", "all"))
        noise = None
        if plan.noise_at == "server":
            noise = gaussian_noise(
                {n: global_state[n] for n in names},
                plan.update_noise_multiplier * clip_norm,
                noise_generator(self.cfg.seed, server_round, SERVER_UPDATE_NOISE),
            )
        instructed = self._round.get("instructed", len(updates))
        if plan.noise_at == "clients" and len(updates) < instructed:
            log.warning(
                "round %d: %d of %d clients replied, so the sum holds %.0f%% of the noise that "
                "was accounted (privacy.noise_at=clients)",
                server_round,
                len(updates),
                instructed,
                100 * len(updates) / instructed,
            )
        denominator = plan.client_sampling.expected_size
        reclip = clip_norm if plan.noise_at == "server" else None
        mean, _ = private_mean(global_state, updates, names, denominator, reclip, noise)
        unclipped = [float(u.metrics.get("dp_unclipped", 0.0)) for u in updates]
        self._round["clipped_fraction"] = 1 - sum(unclipped) / len(unclipped)
        if plan.count_noise_std is not None:
            self._adapt_clip(server_round, unclipped, denominator)
        return [ClientUpdate(-1, mean, num_examples=1, train_loss=0.0, num_steps=0)]

    def _adapt_clip(self, server_round: int, unclipped: list[float], denominator: float) -> None:
        """Andrew et al. 2021: C ← C · exp(−η_C (b̃ − γ)) from the noised unclipped fraction b̃."""
        plan = self.plan
        centred = sum(b - 0.5 for b in unclipped)  # Σ(b_i − ½): sensitivity ½
        if plan.noise_at == "server" and plan.count_noise_std is not None:
            generator = noise_generator(self.cfg.seed, server_round, SERVER_COUNT_NOISE)
            centred += float(torch.randn((), generator=generator)) * plan.count_noise_std
        estimate = centred / denominator + 0.5
        self._round["unclipped_estimate"] = estimate
        self.clip_norm *= math.exp(-plan.clip_lr * (estimate - plan.target_quantile))

    def _count_round(self, client_metrics: dict[Any, dict[str, Any]]) -> None:
        self.rounds_done += 1
        for client, metrics in client_metrics.items():
            if "dp_steps" in metrics:
                _, steps = self.example_steps.get(int(client), (0.0, 0))
                rate = float(metrics["dp_sample_rate"])
                self.example_steps[int(client)] = (rate, steps + int(metrics["dp_steps"]))

    def _example_epsilon(self, rate: float, steps: int) -> float:
        if (rate, steps) not in self._epsilons:
            self._epsilons[(rate, steps)] = self.plan.example_epsilon(rate, steps)
        return self._epsilons[(rate, steps)]

    def epsilon_per_client(self) -> dict[int, float]:
        """Each client's ε so far (example level)."""
        return {c: self._example_epsilon(q, t) for c, (q, t) in sorted(self.example_steps.items())}

    def epsilon(self) -> float:
        """ε spent so far: the run's (client level) or the largest client's (example level)."""
        if self.plan.level == "client":
            return self.plan.client_epsilon(self.rounds_done)
        return max(self.epsilon_per_client().values(), default=0.0)

    def round_metrics(self, updates: list[ClientUpdate]) -> dict[str, Any]:
        """The round's ``privacy`` record; counts the round (and its clients' steps) as spent."""
        clip_used = self._round.get("clip_norm_used", self.clip_norm)
        self._count_round({u.client_id: u.metrics for u in updates})
        plan = self.plan
        record: dict[str, Any] = {
            "level": plan.level,
            "accountant": plan.accountant,
            "epsilon": self.epsilon(),
            "delta": plan.delta,
            "noise_multiplier": plan.noise_multiplier,
            "clip_norm": clip_used,
            "clipped_fraction": self._round.get("clipped_fraction"),
        }
        if plan.level == "client":
            record["noise_at"] = plan.noise_at
            record["update_noise_multiplier"] = plan.update_noise_multiplier
            record["denominator"] = plan.client_sampling.expected_size
        if plan.count_noise_std is not None:
            record["next_clip_norm"] = self.clip_norm
            record["unclipped_estimate"] = self._round.get("unclipped_estimate")
        if plan.level == "example":
            record["epsilon_per_client"] = {str(c): e for c, e in self.epsilon_per_client().items()}
        return record

    def final_line(self) -> str:
        """e.g. ``ε = 3.2 at δ = 1e-05 (client-level, RDP)``."""
        plan = self.plan
        return epsilon_line(
            {
                "epsilon": self.epsilon(),
                "delta": plan.delta,
                "level": plan.level,
                "accountant": plan.accountant,
            }
        )
