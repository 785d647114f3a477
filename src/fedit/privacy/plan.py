"""The privacy plan of a run: z, C, δ and the sampling, fixed before round 1.

``plan_client_level`` and ``plan_example_level`` calibrate z to ``privacy.target_epsilon`` for
the configured rounds (or take ``privacy.noise_multiplier``); the plan is saved as
``privacy.json`` in the run directory, so that a resumed run uses the same z and knows how
many rounds its budget covers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting import dp_event
from dp_accounting.dp_event import DpEvent

from fedit.config import Config, ConfigError
from fedit.io import atomic_write_json
from fedit.privacy.accountant import (
    Relation,
    Sampling,
    calibrate_noise,
    epsilon,
    example_event,
    repeated,
    round_event,
    update_multiplier,
)
from fedit.privacy.threats import guarantee_clause, threat_model

PLAN_FILE = "privacy.json"


@dataclass
class PrivacyPlan:
    """Everything the accountant and the mechanism need, fixed before round 1."""

    level: str  # client or example
    accountant: str  # rdp or pld
    noise_multiplier: float  # z: total (update and count) noise std / C on the sum
    clip_norm: float  # C before round 1 (adaptive clipping moves it)
    delta: float
    delta_is_default: bool  # δ = min(1e-5, 1/N^1.1)
    population: int  # N: clients (client level) or training examples (example level)
    rounds: int  # the rounds a target ε was calibrated for (the budget)
    target_epsilon: float | None = None
    noise_at: str = "server"
    sampling: str = "all"  # client level: poisson, fixed or all
    sample_rate: float = 1.0
    sample_size: int = 0
    update_noise_multiplier: float = 0.0  # z_Δ (= z without adaptive clipping)
    count_noise_std: float | None = None  # σ_b, adaptive clipping only
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    client_sizes: list[int] = dataclasses.field(default_factory=list)  # what it was made for
    reproducible_noise: bool = False  # the noise follows from the seed: every ε is void
    # noise_at=clients: ε₁ of one upload, what the server sees of it without secure
    # aggregation (with it, only of an upload that t colluding clients help it unmask).
    upload_epsilon: float | None = None
    secure_aggregation: bool = False  # SecAgg+: the server sees only the sum (False in old plans)
    personalization: str = "none"  # personalization.method: clients' own models, outside ε
    # Against whom ε holds (privacy.threats): party -> {"learns", "guarantee"}, saved with it.
    threat_model: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def client_sampling(self) -> Sampling:
        return Sampling(self.sampling, self.population, self.sample_rate, self.sample_size)

    @property
    def relation(self) -> Relation:
        if self.level == "example":
            return Relation.ADD_OR_REMOVE_ONE
        return self.client_sampling.relation

    @property
    def selection_is_private(self) -> bool:
        """Whether the accountant counts on the round's clients being secret (amplification by
        sampling): client level with Poisson or fixed-size sampling of some of the clients."""
        return self.level == "client" and self.sampling in ("poisson", "fixed")

    def describe_threats(self) -> None:
        """Fill ``threat_model`` and ``upload_epsilon`` for this plan's level, noise_at and
        secure aggregation."""
        model = threat_model(self.level, self.noise_at, self.secure_aggregation)
        self.threat_model = {p: dataclasses.asdict(e) for p, e in model.items()}
        if self.level == "client" and self.noise_at == "clients":
            # One upload, seen by the server: clip(Δ) + N(0, z²C²/D). Swapping the client's
            # data moves it by up to 2C (replace-one), so its multiplier is z/(2√D). Under
            # secure aggregation the server sees an upload alone only if t clients collude.
            shares = max(self.client_sampling.expected_size, 1.0)
            event = dp_event.GaussianDpEvent(self.update_noise_multiplier / (2 * shares**0.5))
            self.upload_epsilon = epsilon(
                event, self.delta, self.accountant, Relation.ADD_OR_REMOVE_ONE
            )

    def client_epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` client-level rounds."""
        if rounds == 0:
            return 0.0
        event = round_event(
            self.client_sampling,
            self.update_noise_multiplier,
            self.count_noise_std,
            self.accountant,
        )
        return epsilon(repeated(event, rounds), self.delta, self.accountant, self.relation)

    def example_epsilon(self, sample_rate: float, steps: int) -> float:
        """ε of one client after ``steps`` DP-SGD steps at Poisson rate ``sample_rate``."""
        if steps == 0:
            return 0.0
        event = example_event(sample_rate, self.noise_multiplier, steps)
        return epsilon(event, self.delta, self.accountant, self.relation)

    def save(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / PLAN_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> PrivacyPlan:
        """The plan a run saved; a ConfigError names the file if it is missing or damaged.

        A plan saved before a field existed takes the field's default (``secure_aggregation``
        False: no run could have used it then).
        """
        path = run_dir / PLAN_FILE
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(
                f"resume: {path} is missing or damaged ({type(err).__name__}); a privacy run "
                "cannot resume without its plan"
            ) from None


RELATIONS = {"add_or_remove_one": "add/remove", "replace_one": "replace-one"}

VOID_REASON = (
    "privacy.reproducible_noise=true: the noise follows from the config's seed, so anyone "
    "holding config.yaml can remove it"
)


def epsilon_line(record: dict[str, Any]) -> str:
    """A round's ``privacy`` record as one line, naming the neighbouring relation and against
    whom it holds, e.g. ``ε = 3 at δ = 1e-05 (client-level, add/remove, RDP) against: another
    client and the public; not against the server (noise added at the server)``. The record's
    ``secure_aggregation`` (absent: False) names the server under distributed DP."""
    if record.get("void"):
        return f"ε void: reproducible noise ({record['void']})"
    largest = " (largest over clients)" if record["level"] == "example" else ""
    relation = RELATIONS.get(str(record.get("relation")), "")
    details = ", ".join(p for p in (f"{record['level']}-level", relation) if p)
    line = (
        f"ε = {record['epsilon']:.3g}{largest} at δ = {record['delta']:.3g} "
        f"({details}, {str(record['accountant']).upper()})"
    )
    if "noise_at" in record or record["level"] == "example":
        noise_at = record.get("noise_at", "server")
        line += " " + guarantee_clause(
            record["level"],
            noise_at,
            record.get("upload_epsilon"),
            bool(record.get("secure_aggregation", False)),
            str(record.get("personalization", "none")),
        )
    return line


def default_delta(population: int) -> float:
    """min(1e-5, 1/N^1.1): smaller than 1/N, as a δ must be to mean anything, and no larger
    than the customary 1e-5, so that N·δ stays far below one whole leaked record."""
    return float(min(1e-5, max(population, 2) ** -1.1))


def client_sampling(cfg: Config, num_clients: int, fixed_size: int) -> Sampling:
    """How the run's rounds draw clients, as the accountant sees it."""
    federation = cfg.federation
    if federation.selection == "poisson":
        return Sampling("poisson", num_clients, rate=federation.sample_rate)
    if fixed_size >= num_clients:
        return Sampling("all", num_clients, size=num_clients)
    return Sampling("fixed", num_clients, rate=fixed_size / num_clients, size=fixed_size)


def _base_plan(cfg: Config, population: int) -> PrivacyPlan:
    privacy = cfg.privacy
    return PrivacyPlan(
        level=privacy.level,
        accountant=privacy.accountant,
        noise_multiplier=privacy.noise_multiplier or 0.0,
        clip_norm=privacy.clip_norm,
        delta=privacy.delta if privacy.delta is not None else default_delta(population),
        delta_is_default=privacy.delta is None,
        reproducible_noise=privacy.reproducible_noise,
        population=population,
        rounds=cfg.federation.rounds,
        target_epsilon=privacy.target_epsilon,
        noise_at=privacy.noise_at,
        target_quantile=privacy.target_quantile,
        clip_lr=privacy.clip_lr,
        personalization=cfg.personalization.method,
    )


def plan_client_level(cfg: Config, num_clients: int, fixed_size: int) -> PrivacyPlan:
    """Calibrate (or take) z for DP-FedAvg over ``federation.rounds`` rounds.

    Raises:
        ConfigError: an accountant that cannot describe the sampling, an unreachable target,
            or adaptive clipping whose count noise leaves no room for the update's.
    """
    sampling = client_sampling(cfg, num_clients, fixed_size)
    plan = _base_plan(cfg, num_clients)
    plan.sampling, plan.sample_rate, plan.sample_size = (
        sampling.kind,
        sampling.rate,
        sampling.size,
    )
    if sampling.kind == "fixed" and plan.accountant == "pld":
        raise ConfigError(
            "privacy.accountant=pld: fixed-size selection is accounted as sampling without "
            "replacement, which only the RDP accountant supports; use privacy.accountant=rdp "
            "or federation.selection=poisson"
        )
    if cfg.privacy.adaptive_clip:
        plan.count_noise_std = cfg.privacy.count_noise_std or sampling.expected_size / 20
    try:
        if plan.target_epsilon is not None:
            plan.noise_multiplier = calibrate_noise(
                lambda z: repeated(round_event(sampling, z, None, plan.accountant), plan.rounds),
                plan.target_epsilon,
                plan.delta,
                plan.accountant,
                sampling.relation,
            )
        plan.update_noise_multiplier = plan.noise_multiplier
        if plan.count_noise_std is not None:
            plan.update_noise_multiplier = update_multiplier(
                plan.noise_multiplier, plan.count_noise_std
            )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return plan


def _example_event_of(sample_rate: float, steps: int, noise_multiplier: float) -> DpEvent:
    return example_event(sample_rate, noise_multiplier, steps)


def plan_example_level(
    cfg: Config, client_sizes: list[int], sample_rates: list[float], total_steps: list[int]
) -> PrivacyPlan:
    """Calibrate (or take) z for DP-SGD so that no client exceeds the target ε.

    Args:
        cfg: The experiment.
        client_sizes: Training examples per client (N is their sum).
        sample_rates: Each client's Poisson rate q_i = batch_size / N_i.
        total_steps: Each client's DP-SGD steps over its planned participations.

    Raises:
        ConfigError: the target cannot be reached.
    """
    plan = _base_plan(cfg, sum(client_sizes))
    if plan.target_epsilon is None:
        return plan
    # A client with both a lower rate and fewer steps than another spends less: skip it.
    pairs = sorted(set(zip(sample_rates, total_steps, strict=True)), reverse=True)
    frontier = [(q, t) for i, (q, t) in enumerate(pairs) if all(t > s for _, s in pairs[:i])]
    try:
        plan.noise_multiplier = max(
            calibrate_noise(
                functools.partial(_example_event_of, q, t),
                plan.target_epsilon,
                plan.delta,
                plan.accountant,
                Relation.ADD_OR_REMOVE_ONE,
            )
            for q, t in frontier
            if t > 0
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return plan
