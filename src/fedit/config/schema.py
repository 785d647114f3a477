"""The whole experiment: ``Config``, which nests every section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedit.config.evaluation import CompareConfig, EvalConfig
from fedit.config.federation import FederationConfig, FlowerConfig, StrategyConfig
from fedit.config.fields import check_choice, option
from fedit.config.privacy import PrivacyConfig
from fedit.config.training import DataConfig, LoraConfig, ModelConfig, TrainConfig

ENGINES = ("simulation", "flower")


@dataclass
class Config:
    """A complete FedIT experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: str = option("simulation", "simulation (in-process) or flower (SuperLink + SuperNodes)")
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    seed: int = option(42, "seed for data generation, partitioning, selection and training")
    output_dir: str = option("runs/quickstart", "run directory")
    resume: bool = option(False, "continue the run in output_dir from its last complete round")
    overwrite: bool = option(False, "replace an existing run in output_dir")

    def validate(self) -> list[str]:
        problems: list[str] = []
        for section in (self.model, self.lora, self.data, self.train, self.federation):
            problems += section.validate()
        problems += self.strategy.validate() + self.eval.validate() + self.privacy.validate()
        problems += self.privacy.conflicts(self.strategy, self.lora, self.federation, self.train)
        problems += self.compare.validate(self.federation.num_clients)
        problems += check_choice("engine", self.engine, ENGINES)
        if self.engine == "flower":
            problems += self.flower.validate()
        ranks = {self.lora.r, *(self.lora.client_ranks or [])}
        if len(ranks) > 1 and self.strategy.name != "exact" and self.privacy.level == "none":
            problems.append(
                f"lora.client_ranks: client ranks other than lora.r={self.lora.r} need "
                f"strategy.name=exact; {self.strategy.name} averages A and B element-wise, "
                "which needs one shape"
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
