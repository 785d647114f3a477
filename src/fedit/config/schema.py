"""The whole experiment: ``Config``, which nests every section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedit.config.adversary import AttackConfig, RobustConfig, combination_problems
from fedit.config.asynchronous import fedbuff_problems
from fedit.config.evaluation import CompareConfig, EvalConfig
from fedit.config.federation import FederationConfig, FlowerConfig, StrategyConfig
from fedit.config.fields import check_choice, option
from fedit.config.personalization import (
    PersonalizationConfig,
    compare_rows_problems,
    personalization_problems,
)
from fedit.config.privacy import PrivacyConfig
from fedit.config.secagg import secagg_problems
from fedit.config.selection import selection_engine_problems
from fedit.config.training import DataConfig, DPOConfig, LoraConfig, ModelConfig, TrainConfig

ENGINES = ("simulation", "flower", "flower-simulation")
TRACKERS = ("tensorboard", "mlflow", "wandb")  # fedit.tracking.TRACKERS implements each


@dataclass
class Config:
    """A complete FedIT experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: str = option(
        "simulation",
        "simulation (in-process), flower (SuperLink + SuperNodes) or flower-simulation "
        "(Flower's simulation runtime on Ray)",
    )
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    report_to: list[str] = option(
        [],
        "experiment trackers to log to: tensorboard, mlflow, wandb (offline by default; "
        "pip install fedit[track]; docs/tracking.md)",
    )
    seed: int = option(42, "seed for data generation, partitioning, selection and training")
    output_dir: str = option("runs/quickstart", "run directory")
    resume: bool = option(False, "continue the run in output_dir from its last complete round")
    overwrite: bool = option(False, "replace an existing run in output_dir")

    def validate(self) -> list[str]:
        problems: list[str] = []
        sections = (self.model, self.lora, self.data, self.train, self.dpo, self.federation)
        for section in sections:
            problems += section.validate()
        problems += self.strategy.validate() + self.eval.validate() + self.privacy.validate()
        problems += self.personalization.validate() + personalization_problems(self)
        problems += compare_rows_problems(self)
        problems += self.privacy.conflicts(self.strategy, self.lora, self.federation, self.train)
        problems += self.compare.validate(self.federation.num_clients)
        problems += check_choice("engine", self.engine, ENGINES)
        problems += selection_engine_problems(self.federation.selection, self.engine)
        problems += self.federation.system.engine_problems(self.engine)
        problems += _tracker_problems(self.report_to)
        if self.engine == "flower":
            problems += self.flower.validate()
        if self.engine == "flower-simulation":
            problems += self.flower.simulation.validate(self.federation.num_clients)
        if self.train.objective == "dpo" and self.train.train_on_inputs:
            problems.append(
                "train.train_on_inputs: DPO compares the answers' log-probabilities only; "
                "set train.train_on_inputs=false with train.objective=dpo"
            )
        if self.train.packing and (
            self.train.objective != "sft" or self.privacy.level == "example"
        ):
            problems.append(
                "train.packing: packs instruction-tuning examples only; it does not apply to "
                "train.objective=dpo or privacy.level=example (per-example gradients need one "
                "example a row); set train.packing=false"
            )
        ranks = {self.lora.r, *(self.lora.client_ranks or [])}
        problems += self._adversary_problems(len(ranks) > 1)
        problems += self._privacy_combinations() + secagg_problems(self)
        problems += fedbuff_problems(self)
        if len(ranks) > 1 and self.strategy.name != "exact" and self.privacy.level == "none":
            problems.append(
                f"lora.client_ranks: client ranks other than lora.r={self.lora.r} need "
                f"strategy.name=exact; {self.strategy.name} averages A and B element-wise, "
                "which needs one shape"
            )
        return problems

    def _adversary_problems(self, mixed_ranks: bool) -> list[str]:
        federation = self.federation
        # strategy.selection.num_selected's rule (config sits below strategy/)
        per_round = min(
            federation.num_clients,
            max(
                int(federation.fraction_fit * federation.num_clients), 1, federation.min_fit_clients
            ),
        )
        problems = self.attack.validate(federation.num_clients) + self.robust.validate()
        return problems + combination_problems(
            self.attack, self.robust, self.strategy.name, mixed_ranks, self.engine, per_round
        )

    def _privacy_combinations(self) -> list[str]:
        """What DP does not compose with that the other sections add (issues 13 and 14)."""
        # Example level: each reply is a client's own DP-SGD output, so a defence judging it is
        # post-processing and composes; only client level turns the replies into one mean.
        if self.privacy.level != "client" or self.robust.method == "none":
            return []
        return [
            f"robust.method: {self.robust.method} judges each client's update, but under "
            "privacy.level=client the strategy sees only the noised mean of the clipped "
            "updates; use robust.method=none (clipping already bounds every client's "
            "influence), or privacy.level=example, where each update is judged as sent"
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tracker_problems(report_to: list[str]) -> list[str]:
    problems = [p for name in report_to for p in check_choice("report_to", name, TRACKERS)]
    if len(set(report_to)) < len(report_to):
        problems.append(f"report_to: a tracker is listed twice in {report_to}; list each once")
    return problems
