"""Aggregation strategies, picked by name from a registry (``strategy.name``)."""

from __future__ import annotations

from fedit.config import Config
from fedit.strategy.base import Strategy
from fedit.strategy.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


def build_strategy(cfg: Config) -> Strategy:
    """Instantiate the strategy named by ``strategy.name``."""
    cls = STRATEGIES[cfg.strategy.name]
    return cls(cfg.federation.fraction_fit, cfg.federation.min_fit_clients, cfg.seed)


__all__ = ["STRATEGIES", "FedAvg", "Strategy", "build_strategy"]
