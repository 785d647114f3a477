"""Config section for differential privacy: ``privacy.*`` and the combinations it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedit.config.fields import check_choice, option
from fedit.config.secagg import SecAggConfig
from fedit.config.selection import DATA_SELECTIONS, selection_conflicts

if TYPE_CHECKING:
    from fedit.config.federation import FederationConfig, StrategyConfig
    from fedit.config.training import LoraConfig, TrainConfig

PRIVACY_LEVELS = ("none", "client", "example")
NOISE_AT = ("server", "clients")
ACCOUNTANTS = ("rdp", "pld")
# Selections whose sampling the client-level accountant can describe (docs/privacy.md).
CLIENT_LEVEL_SELECTIONS = ("poisson", "random")
DP_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "ffa_lora")
_INSTEAD = "use one of " + ", ".join(DP_STRATEGIES)


@dataclass
class PrivacyConfig:
    """Differential privacy: client-level (DP-FedAvg) or example-level (DP-SGD), with ε."""

    level: str = option(
        "none",
        "none; client (DP-FedAvg: clip each client's update, uniform mean, Gaussian noise); "
        "or example (DP-SGD inside each client)",
    )
    clip_norm: float = option(
        1.0, "C: L2 clip of each client's update (client) or each example's gradient (example)"
    )
    noise_at: str = option(
        "server",
        "client level: server (a trusted server adds the noise) or clients (each client adds "
        "its share, so the server never sees a noise-free update)",
    )
    noise_multiplier: float | None = option(
        None, "z: noise std / C; set it, or privacy.target_epsilon to calibrate it"
    )
    target_epsilon: float | None = option(
        None, "ε to spend over federation.rounds; z is calibrated before round 1"
    )
    delta: float | None = option(
        None,
        "δ; default min(1e-5, 1/N^1.1) with N the clients (client level) or training examples",
    )
    accountant: str = option("rdp", "rdp or pld (dp-accounting); pld is tighter, slower")
    adaptive_clip: bool = option(
        False, "client level: quantile clipping (Andrew et al. 2021), its count noise in ε"
    )
    target_quantile: float = option(
        0.5, "adaptive_clip: fraction of updates that should fall within the clip"
    )
    clip_lr: float = option(0.2, "adaptive_clip: geometric step size of the clip per round")
    count_noise_std: float | None = option(
        None, "adaptive_clip: std of the noise on the unclipped count; default clients/round / 20"
    )
    reproducible_noise: bool = option(
        False,
        "tests and debugging only: draw the noise, DP-SGD's batches and private selection from "
        "seed instead of secret entropy; every ε of the run is then reported void",
    )
    site_min_noise_multiplier: float | None = option(
        None,
        "in-process engine: every simulated site refuses an instruction with a lower z (a "
        "Flower site: fedit flower supernode --min-noise-multiplier)",
    )
    site_max_clip_norm: float | None = option(
        None,
        "in-process engine: every simulated site refuses an instruction with a larger C (a "
        "Flower site: fedit flower supernode --max-clip-norm)",
    )

    secure_aggregation: bool = option(
        False,
        "SecAgg+ on the Flower engines: clients mask their updates so the server learns only "
        "their sum (with noise_at: clients, distributed DP)",
    )
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def validate(self) -> list[str]:
        problems = check_choice("privacy.level", self.level, PRIVACY_LEVELS)
        problems += self.secagg.validate()
        problems += check_choice("privacy.noise_at", self.noise_at, NOISE_AT)
        problems += check_choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        for key in ("site_min_noise_multiplier", "site_max_clip_norm"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                problems.append(f"privacy.{key}: must be > 0, got {value}")
        if self.level == "none":
            return problems
        if not self.clip_norm > 0:
            problems.append(f"privacy.clip_norm: must be > 0, got {self.clip_norm}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            problems.append(
                "privacy.noise_multiplier: set it or privacy.target_epsilon, exactly one of them"
            )
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            problems.append(f"privacy.noise_multiplier: must be > 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            problems.append(f"privacy.target_epsilon: must be > 0, got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            problems.append(f"privacy.delta: must be in (0, 1), got {self.delta}")
        if self.count_noise_std is not None and not self.count_noise_std > 0:
            problems.append(f"privacy.count_noise_std: must be > 0, got {self.count_noise_std}")
        if not 0 < self.target_quantile < 1:
            problems.append(
                f"privacy.target_quantile: must be in (0, 1), got {self.target_quantile}"
            )
        if not self.clip_lr > 0:
            problems.append(f"privacy.clip_lr: must be > 0, got {self.clip_lr}")
        if self.adaptive_clip and self.level != "client":
            problems.append("privacy.adaptive_clip: applies to privacy.level=client only")
        return problems

    def conflicts(
        self,
        strategy: StrategyConfig,
        lora: LoraConfig,
        federation: FederationConfig,
        train: TrainConfig,
    ) -> list[str]:
        """What the rest of the config asks that DP cannot honour, each with what to use instead."""
        # The simulated clock (federation.system) needs what DP and SecAgg keep per client.
        problems = federation.system.conflicts(self.level, self.secure_aggregation)
        problems += selection_conflicts(federation.selection, self.level, self.secure_aggregation)
        if self.level == "none":
            return problems
        where = f"privacy.level={self.level}"
        if strategy.name == "scaffold":
            problems.append(
                f"strategy.name=scaffold: refused with {where}; its control variates are an "
                f"unprotected second channel; {_INSTEAD}"
            )
        if strategy.name == "exact":
            problems.append(
                f"strategy.name=exact: refused with {where}; its SVD of per-client factors is "
                f"not post-processing of a noised sum; {_INSTEAD} (ffa_lora averages exactly)"
            )
        if len({lora.r, *(lora.client_ranks or [])}) > 1:
            problems.append(
                f"lora.client_ranks: heterogeneous ranks are refused with {where}; the noised "
                "mean needs one shape per tensor; drop lora.client_ranks"
            )
        data_selection = federation.selection in DATA_SELECTIONS  # refused above, in one line
        if (
            self.level == "client"
            and federation.selection not in CLIENT_LEVEL_SELECTIONS
            and not data_selection
        ):
            problems.append(
                f"federation.selection={federation.selection}: refused with {where}; the "
                "accountant needs poisson (with federation.sample_rate) or random (fixed size)"
            )
        fixed_size = federation.selection == "random" and federation.fraction_fit < 1
        if self.level == "client" and self.accountant == "pld" and fixed_size:
            problems.append(
                "privacy.accountant=pld: fixed-size selection is accounted as sampling without "
                "replacement, which only the RDP accountant supports; use privacy.accountant=rdp "
                "or federation.selection=poisson"
            )
        if self.level == "example" and train.gradient_checkpointing:
            problems.append(
                f"train.gradient_checkpointing: refused with {where}; per-example gradients "
                "record activations in one forward pass; set it to false"
            )
        return problems
