"""A run's differential privacy on the server: instructions, the private mean, ε so far.

The round loop calls these, and only when ``privacy.level`` is not ``none``:
``selection_seed`` draws the round's clients in secret when the accountant counts on it;
``instruct`` puts C, z and the noise shares' denominator into each ``FitConfig``;
``aggregation_input`` turns the replies into what the strategy may average (the noised,
unweighted mean at client level, topped up to the accounted noise when replies are missing;
uniform weights at example level); ``round_metrics`` is the round's ``privacy`` record and
``public_record`` strips the round's record of everything per-client; ``final_line`` ends
the run. The plan comes from ``server.privacy_budget``; ε is recomputed from it and the rounds
completed, so a resumed run reports the same ε.

The server's own noise and private selection come from its ``NoiseSource``: secret entropy,
or the run's seed under ``privacy.reproducible_noise`` (then every ε is reported void).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch

from fedit.config import Config
from fedit.privacy.mechanism import private_mean
from fedit.privacy.plan import VOID_REASON, PrivacyPlan, epsilon_line
from fedit.privacy.randomness import (
    SERVER_COUNT_NOISE,
    SERVER_UPDATE_NOISE,
    NoiseSource,
    gaussian_noise,
    gaussian_scalar,
)
from fedit.server.privacy_budget import exposure, make_plan
from fedit.types import (
    AdapterState,
    ClientUpdate,
    FitConfig,
    FitInstruction,
    SecureSum,
    shared_names,
)

log = logging.getLogger(__name__)

# Per-client entries a private run's metrics.jsonl keeps: the server's own byte counts, the
# same for every client under DP (and none at all when the selection is secret).
RECORDED_CLIENT_METRICS = ("bytes_down", "bytes_up")
# Relative slack under C below which the server reads a clipped update's norm as unclipped.
_CLIPPED_SLACK = 1e-5


class PrivacyRun:
    """The server's side of DP for one run (see the module docstring)."""

    def __init__(self, cfg: Config, plan: PrivacyPlan):
        self.cfg = cfg
        self.plan = plan
        self.noise = NoiseSource(cfg.seed if plan.reproducible_noise else None)
        self.rounds_done = 0
        self.clip_norm = plan.clip_norm
        self._epsilons: dict[tuple[float, int], float] = {}
        self._round: dict[str, Any] = {}
        self._sent_by: FitConfig | None = None  # the round's FitConfig (what replies carry)
        log.info(
            "privacy.level=%s: the mean is unweighted over each round's clients, whatever "
            "strategy.name=%s's weighting says (example counts would raise the sensitivity)",
            plan.level,
            cfg.strategy.name,
        )
        if plan.reproducible_noise:
            log.warning("ε void: %s", VOID_REASON)

    @classmethod
    def start(
        cls, cfg: Config, client_sizes: list[int], resumed: PrivacyPlan | None = None
    ) -> PrivacyRun:
        """A fresh run's calibrated plan, or the ``resumed`` run's (``resumed_plan``).

        Raises:
            ConfigError: calibration failed, or the accountant gave no valid ε.
        """
        return cls(cfg, resumed if resumed is not None else make_plan(cfg, client_sizes))

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Rebuild the rounds spent and the clip from a resumed run's records."""
        for record in history:
            if "privacy" in record:
                self.rounds_done += 1
                self.clip_norm = record["privacy"].get("next_clip_norm", self.clip_norm)

    def selection_seed(self, server_round: int) -> int | None:
        """The seed of this round's selection when the accountant assumes it is secret (client
        level, Poisson or fixed-size sampling), else None: the strategy's seeded selection."""
        if not self.plan.selection_is_private:
            return None
        return self.noise.selection_seed(server_round)

    def instruct(self, instructions: list[FitInstruction]) -> list[FitInstruction]:
        """Each instruction with the round's C and z, and D when the clients add the noise.

        Each client adds N(0, z_Δ²C²/D) with D the plan's expected clients per round, so D
        replies carry N(0, z_Δ²C²); the server adds what fewer replies lack.
        """
        plan, clip_norm = self.plan, self.clip_norm
        fields: dict[str, Any] = {"dp_level": plan.level, "dp_clip_norm": clip_norm}
        if plan.level == "example":
            fields["dp_noise_multiplier"] = plan.noise_multiplier
        else:
            fields["dp_noise_multiplier"] = plan.update_noise_multiplier
        if plan.level == "client" and plan.noise_at == "clients":
            fields["dp_noise_shares"] = self._shares
            if plan.count_noise_std is not None:
                fields["dp_count_noise_std"] = plan.count_noise_std
        # What the replies carry; every client of a round is told the same (FedAvg's config).
        self._sent_by = instructions[0].config if instructions else None
        self._round = {"clip_norm_used": clip_norm}
        return [
            dataclasses.replace(i, config=dataclasses.replace(i.config, **fields))
            for i in instructions
        ]

    @property
    def _shares(self) -> float:
        return max(self.plan.client_sampling.expected_size, 1.0)

    def aggregation_input(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> list[ClientUpdate]:
        """What the strategy may average: one noised unweighted mean, or uniform weights.

        At client level the mean is released whatever came back, even from no reply at all:
        the noise the replies lack (all of it with ``noise_at: server``; D − r of D shares
        with r < D replies from the clients) is drawn by the server, so the released sum
        always carries the N(0, z_Δ²C²) that was accounted.
        """
        if self.plan.level == "example":
            return [dataclasses.replace(u, num_examples=1) for u in updates]
        plan, clip_norm = self.plan, self.clip_norm
        names = self._names(global_state)
        missing, noise = self._top_up(server_round, global_state, names, len(updates))
        reclip = clip_norm if plan.noise_at == "server" else None
        mean, norms = private_mean(
            global_state, updates, names, plan.client_sampling.expected_size, reclip, noise
        )
        if plan.count_noise_std is not None:
            if plan.noise_at == "clients":
                bits = [float(u.metrics.get("dp_unclipped", 0.0)) for u in updates]
            else:  # the server reads the bits off the clipped updates it holds
                threshold = self.clip_norm * (1 - _CLIPPED_SLACK)
                bits = [1.0 if norm <= threshold else 0.0 for norm in norms]
            self._adapt_clip(server_round, sum(b - 0.5 for b in bits), missing)
        return [ClientUpdate(-1, mean, num_examples=1, train_loss=0.0, num_steps=0)]

    def secure_input(
        self, server_round: int, global_state: AdapterState, secure: SecureSum
    ) -> list[ClientUpdate]:
        """``aggregation_input`` from secure aggregation's sum instead of the replies.

        The sum already carries the clients' noise shares (``noise_at: clients``: distributed
        DP); the server adds what missing shares lack, or all of it, and divides by D. At
        example level each summand is a client's own DP-SGD output: the uniform mean.
        """
        names = self._names(global_state)
        if self.plan.level == "example":
            count = max(secure.weight_sum, 1.0)
            return [_mean_reply(global_state, secure.delta_sum, names, count, None)]
        plan, count = self.plan, len(secure.clients)
        missing, noise = self._top_up(server_round, global_state, names, count)
        denominator = plan.client_sampling.expected_size
        reply = _mean_reply(global_state, secure.delta_sum, names, denominator, noise)
        if plan.count_noise_std is not None:  # noised bits, summed under the masks
            self._adapt_clip(server_round, secure.unclipped_bits - 0.5 * count, missing)
        return [reply]

    def _names(self, global_state: AdapterState) -> list[str]:
        """The tensors the round's replies carry; all of them when nobody was instructed."""
        config = self._sent_by or FitConfig(lr=0.0, rank=0, seed=0)
        return shared_names(global_state, config)

    def _top_up(
        self, server_round: int, global_state: AdapterState, names: list[str], replies: int
    ) -> tuple[float, AdapterState | None]:
        """The fraction of the accounted variance the server must add, and that noise."""
        plan = self.plan
        missing = 1.0
        if plan.noise_at == "clients":
            missing = max(0.0, 1.0 - replies / self._shares)
        if missing == 0:
            return missing, None
        std = plan.update_noise_multiplier * self.clip_norm * math.sqrt(missing)
        generator = self.noise.generator(server_round, SERVER_UPDATE_NOISE)
        return missing, gaussian_noise({n: global_state[n] for n in names}, std, generator)

    def _adapt_clip(self, server_round: int, centred: float, missing: float) -> None:
        """Andrew et al. 2021: C ← C · exp(−η_C (b̃ − γ)) from the noised unclipped fraction b̃.

        ``centred`` is Σ(b_i − ½) over the replies (sensitivity ½): bits noised by the clients
        (``noise_at: clients``), or read by the server off the clipped updates it holds; the
        server adds the part of N(0, σ_b²) that missing replies lack.
        """
        plan = self.plan
        if missing > 0:
            generator = self.noise.generator(server_round, SERVER_COUNT_NOISE)
            centred += gaussian_scalar(
                (plan.count_noise_std or 0.0) * math.sqrt(missing), generator
            )
        estimate = centred / plan.client_sampling.expected_size + 0.5
        self._round["unclipped_estimate"] = estimate
        self.clip_norm *= math.exp(-plan.clip_lr * (estimate - plan.target_quantile))

    def _example_epsilon(self, rate: float, steps: int) -> float:
        if (rate, steps) not in self._epsilons:
            self._epsilons[(rate, steps)] = self.plan.example_epsilon(rate, steps)
        return self._epsilons[(rate, steps)]

    def epsilon_per_client(self) -> dict[int, float]:
        """Each client's ε after the rounds done (example level), from the plan: its DP-SGD
        rate and steps in every round the public selection gave it."""
        spent = exposure(self.cfg, self.plan.client_sizes, self.rounds_done)
        return {c: self._example_epsilon(q, t) for c, (q, t) in enumerate(spent) if t > 0}

    def epsilon(self) -> float:
        """ε spent so far: the run's (client level) or the largest client's (example level)."""
        if self.plan.level == "client":
            return self.plan.client_epsilon(self.rounds_done)
        return max(self.epsilon_per_client().values(), default=0.0)

    def round_metrics(self) -> dict[str, Any]:
        """The round's ``privacy`` record; counts the round as spent.

        Only plan quantities and noised aggregates: no clipped fraction (exact per-client
        bits), no reply count.
        """
        clip_used = self._round.get("clip_norm_used", self.clip_norm)
        self.rounds_done += 1
        plan = self.plan
        record = self._guarantee()
        record |= {"noise_multiplier": plan.noise_multiplier, "clip_norm": clip_used}
        if plan.level == "client":
            record["update_noise_multiplier"] = plan.update_noise_multiplier
            record["denominator"] = plan.client_sampling.expected_size
        if plan.count_noise_std is not None:
            record["next_clip_norm"] = self.clip_norm
            record["unclipped_estimate"] = self._round.get("unclipped_estimate")
        if plan.level == "example":
            record["epsilon_per_client"] = {str(c): e for c, e in self.epsilon_per_client().items()}
        return record

    def _guarantee(self) -> dict[str, Any]:
        """What ``epsilon_line`` reads: ε so far, δ, the relation and against whom it holds."""
        plan = self.plan
        guarantee: dict[str, Any] = {
            "level": plan.level,
            "accountant": plan.accountant,
            "epsilon": self.epsilon(),
            "delta": plan.delta,
            "relation": plan.relation.name.lower(),
        }
        if plan.level == "client":
            guarantee["noise_at"] = plan.noise_at
        if plan.upload_epsilon is not None:
            guarantee["upload_epsilon"] = plan.upload_epsilon
        if plan.secure_aggregation:
            guarantee["secure_aggregation"] = True
        if plan.reproducible_noise:
            guarantee["void"] = VOID_REASON
        return guarantee

    def public_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The round's metrics.jsonl record with nothing per-client left in the clear.

        The clients' training losses and example counts go (they are not even sent); the
        per-client metrics keep only the server's byte counts; and when the selection is part
        of the guarantee, who was selected, who dropped out and how many bytes moved (which
        counts the replies) go too.
        """
        record = dict(record, train_loss={}, num_examples={})
        if self.plan.selection_is_private:
            for key in ("selected_clients", "dropped_clients", "client_metrics", "communication"):
                record.pop(key, None)
            return record
        record["client_metrics"] = {
            client: {k: v for k, v in metrics.items() if k in RECORDED_CLIENT_METRICS}
            for client, metrics in record.get("client_metrics", {}).items()
        }
        return record

    def final_line(self) -> str:
        """e.g. ``ε = 3.2 at δ = 1e-05 (client-level, add/remove, RDP) against: …``."""
        return epsilon_line(self._guarantee())


def _mean_reply(
    global_state: AdapterState,
    delta_sum: AdapterState,
    names: list[str],
    denominator: float,
    noise: AdapterState | None,
) -> ClientUpdate:
    """x + (Σ Δ_i + noise) / D over ``names``, as the one reply the strategy averages."""
    mean = {n: t.detach().float().cpu().clone() for n, t in global_state.items()}
    for n in names:
        total = delta_sum[n].float() if n in delta_sum else torch.zeros_like(mean[n])
        if noise is not None:
            total = total + noise[n]
        mean[n] += total / denominator
    return ClientUpdate(-1, mean, num_examples=1, train_loss=0.0, num_steps=0)
