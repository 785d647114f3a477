"""FedProx: FedAvg whose clients add a proximal term that keeps them near the global adapter."""

from __future__ import annotations

import dataclasses

from fedit.strategy.fedavg import FedAvg
from fedit.types import FitConfig


class FedProx(FedAvg):
    """Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

    Each client minimises ``h_k(w) = F_k(w) + μ/2 ‖w − w^t‖²`` over the LoRA parameters, with
    ``w^t`` the global adapter it received and ``μ = strategy.proximal_mu`` (the paper tries
    0.001, 0.01, 0.1 and 1; default 0.01). The server aggregates as FedAvg.
    """

    def fit_config(self, server_round: int, client_id: int, lr: float) -> FitConfig:
        config = super().fit_config(server_round, client_id, lr)
        return dataclasses.replace(config, proximal_mu=self.cfg.strategy.proximal_mu)
