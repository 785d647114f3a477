"""Aggregation strategies, picked by name from a registry (``strategy.name``)."""

from __future__ import annotations

from fedit.config import Config
from fedit.strategy.base import Strategy
from fedit.strategy.exact import Exact
from fedit.strategy.fedavg import FedAvg
from fedit.strategy.fedavgm import FedAvgM
from fedit.strategy.fedbuff import FedBuff
from fedit.strategy.fedopt import FedAdagrad, FedAdam, FedYogi
from fedit.strategy.fedprox import FedProx
from fedit.strategy.ffa_lora import FfaLora
from fedit.strategy.scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "scaffold": Scaffold,
    "ffa_lora": FfaLora,
    "exact": Exact,
    "fedbuff": FedBuff,
}


def build_strategy(cfg: Config) -> Strategy:
    """Instantiate the strategy named by ``strategy.name``."""
    return STRATEGIES[cfg.strategy.name](cfg)


__all__ = ["STRATEGIES", "FedAvg", "Strategy", "build_strategy"]
